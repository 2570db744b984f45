"""`koala admin register-cluster | deregister-cluster | register-nodes | deregister-nodes | sync-keys`.

As `euca_conf --register-nodes` did: put a component's certificate and keys on its host over SSH (asyncssh,
SFTP), then register it with the CLC (clusters) or its zone's CC (nodes) with the `koala-admin` certificate.
Files go to --remote-dir (default /etc/koala/pki): ca.pem, <id>.pem and <id>-key.pem (0600), plus the cloud
key pair for the CLC and Walrus. The component's certificate is issued from the local PKI when missing.
Host keys are checked against known_hosts unless --no-host-key-check is given. Secrets are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import stat
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.utils import CryptographyDeprecationWarning

with warnings.catch_warnings():  # asyncssh's type hints name DSA, which cryptography deprecates; we never use DSA
    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
    import asyncssh

from cli.allinone import AllInOne
from common import pki
from common.messages import clc_cc
from common.messages import clusters as msg
from common.rpc import Empty, PeerUnreachable, RpcClient, RpcError

DEFAULT_REMOTE_DIR = "/etc/koala/pki"
CLOUD_KEY_ROLES = {"clc", "walrus"}  # they decrypt and sign bundles with the cloud key pair
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$|^\[?[0-9A-Fa-f:.]+\]?$")


class HostError(Exception):
    """A per-host failure with a message fit for the admin (never a secret)."""


@dataclass
class SshOptions:
    user: str
    port: int
    keys: list[Path]
    password: str | None
    known_hosts: Path | None
    check_host_key: bool
    timeout: float
    remote_dir: str
    owner: tuple[int, int] | None


@dataclass
class Upload:
    name: str
    data: bytes
    mode: int


# --- argument parsing -----------------------------------------------------------------------------------
def add_commands(commands: argparse._SubParsersAction) -> None:
    """Called by cli/admin_cmd.py with the `koala admin` subparsers."""
    ssh = argparse.ArgumentParser(add_help=False)
    group = ssh.add_argument_group("SSH")
    group.add_argument("--ssh-user", default="root", help="remote user (default root)")
    group.add_argument("--ssh-port", type=int, default=22, help="remote SSH port (default 22)")
    group.add_argument("--ssh-key", type=Path, action="append", default=[], help="private key file (repeatable)")
    group.add_argument(
        "--ssh-password-file", type=Path, help="file holding the SSH password (or set KOALA_SSH_PASSWORD)"
    )
    group.add_argument("--known-hosts", type=Path, help="known_hosts file (default ~/.ssh/known_hosts)")
    group.add_argument(
        "--no-host-key-check", action="store_true", help="DANGEROUS: accept any host key (no MITM protection)"
    )
    group.add_argument("--ssh-timeout", type=float, default=15.0, help="connect timeout in seconds")
    group.add_argument(
        "--remote-dir", default=DEFAULT_REMOTE_DIR, help=f"remote PKI dir (default {DEFAULT_REMOTE_DIR})"
    )
    group.add_argument("--remote-owner", help="numeric UID:GID to own the remote files (e.g. the koala user)")

    sync = commands.add_parser("sync-keys", parents=[ssh], help="copy a component's certificate and keys to a host")
    sync.add_argument("host")
    sync.add_argument("--role", required=True, choices=sorted(pki.COMPONENT_ROLES - {"admin"}))
    sync.add_argument("--id", required=True, help="the component id (its certificate's CN)")
    sync.set_defaults(func=run, hosts_action=_sync_keys)

    cluster = commands.add_parser(
        "register-cluster", parents=[ssh], help="send a CC its keys and register it with the CLC for a zone"
    )
    cluster.add_argument("zone")
    cluster.add_argument("host", help="the CC's host (SSH target and, without --url, its address)")
    cluster.add_argument("--cc-port", type=int, default=8774, help="the CC's port (default 8774)")
    cluster.add_argument("--url", help="the CC's URL as the CLC reaches it (default http://HOST:CC-PORT)")
    cluster.add_argument("--id", help="the CC's component id (default cc-ZONE)")
    cluster.add_argument("--no-sync", action="store_true", help="do not copy keys, only register")
    cluster.add_argument("--force", action="store_true", help="register even if the CC does not answer yet")
    cluster.set_defaults(func=run, hosts_action=_register_cluster)

    uncluster = commands.add_parser("deregister-cluster", help="remove a registered cluster from the CLC")
    uncluster.add_argument("zone")
    uncluster.set_defaults(func=run, hosts_action=_deregister_cluster)

    listing = commands.add_parser("clusters", help="list the CLC's clusters (configured and registered)")
    listing.set_defaults(func=run, hosts_action=_list_clusters)

    nodes = commands.add_parser(
        "register-nodes", parents=[ssh], help="send NCs their keys and register them with their zone's CC"
    )
    nodes.add_argument("hosts", nargs="+", metavar="host")
    _cluster_choice(nodes)
    nodes.add_argument("--nc-port", type=int, default=8775, help="the NCs' port (default 8775)")
    nodes.add_argument("--id", help="the NC's component id, one host only (default nc-HOST)")
    nodes.add_argument("--no-sync", action="store_true", help="do not copy keys, only register")
    nodes.set_defaults(func=run, hosts_action=_register_nodes)

    unnodes = commands.add_parser("deregister-nodes", help="remove NCs from their zone's CC")
    unnodes.add_argument("hosts", nargs="+", metavar="host")
    _cluster_choice(unnodes)
    unnodes.add_argument("--nc-port", type=int, default=8775, help="the NCs' port (default 8775)")
    unnodes.set_defaults(func=run, hosts_action=_deregister_nodes)


def _cluster_choice(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", metavar="ZONE", help="the nodes' zone (default: the only cluster)")
    parser.add_argument("--cc-url", help="the CC's URL (default: asked from the CLC)")


def _ssh_options(args: argparse.Namespace) -> SshOptions:
    password = os.environ.get("KOALA_SSH_PASSWORD") or None
    if args.ssh_password_file:
        try:
            password = args.ssh_password_file.read_text().splitlines()[0]
        except (OSError, IndexError) as err:
            raise HostError(f"cannot read the password file {args.ssh_password_file}: {err}") from None
    owner = None
    if args.remote_owner:
        match = re.fullmatch(r"(\d+):(\d+)", args.remote_owner)
        if not match:
            raise HostError("--remote-owner must be numeric UID:GID")
        owner = (int(match.group(1)), int(match.group(2)))
    if not args.remote_dir.startswith("/") or ".." in args.remote_dir.split("/"):
        raise HostError("--remote-dir must be an absolute path without '..'")
    for key in args.ssh_key:
        if not key.is_file():
            raise HostError(f"no SSH key file {key}")
    return SshOptions(
        user=args.ssh_user,
        port=args.ssh_port,
        keys=args.ssh_key,
        password=password,
        known_hosts=args.known_hosts,
        check_host_key=not args.no_host_key_check,
        timeout=args.ssh_timeout,
        remote_dir=args.remote_dir.rstrip("/") or "/",
        owner=owner,
    )


def _check_host(host: str) -> str:
    if not _HOST.match(host):
        raise HostError(f"{host!r} is not a host name or address")
    return host.strip("[]")


# --- the files and the SSH side ---------------------------------------------------------------------------
def component_files(store: pki.PkiDir, component_id: str, role: str) -> list[Upload]:
    """What a component's host needs, issuing its certificate from the local CA when missing."""
    store.ensure(component_id, role)
    cert = pki.load_cert(store.cert_path(component_id))
    if pki.role_of(cert) != role:
        raise HostError(f"the certificate of {component_id} is for role {pki.role_of(cert)}, not {role}")
    files = [
        Upload(pki.CA_FILE, store.ca_path.read_bytes(), 0o644),
        Upload(f"{component_id}.pem", store.cert_path(component_id).read_bytes(), 0o644),
        Upload(f"{component_id}-key.pem", store.key_path(component_id).read_bytes(), 0o600),
    ]
    if role in CLOUD_KEY_ROLES:
        files.append(Upload(pki.CLOUD_CERT_FILE, (store.path / pki.CLOUD_CERT_FILE).read_bytes(), 0o644))
        files.append(Upload(pki.CLOUD_KEY_FILE, (store.path / pki.CLOUD_KEY_FILE).read_bytes(), 0o600))
    return files


async def push_files(host: str, options: SshOptions, files: list[Upload]) -> None:
    """Connect, make the remote directory safe, write each file atomically with its mode."""
    connect: dict[str, Any] = {
        "port": options.port,
        "username": options.user,
        "known_hosts": (str(options.known_hosts) if options.known_hosts else ()) if options.check_host_key else None,
        "connect_timeout": options.timeout,
    }
    if options.keys:
        connect["client_keys"] = [str(key) for key in options.keys]
        connect["agent_path"] = None
    if options.password is not None:
        connect["password"] = options.password
    try:
        async with asyncssh.connect(host, **connect) as conn, conn.start_sftp_client() as sftp:
            await _ensure_dir(sftp, options)
            for upload in files:
                await _upload(sftp, options, upload)
    except asyncssh.HostKeyNotVerifiable as err:
        raise HostError(
            f"{host}: host key not verified ({err.reason}); add it to known_hosts "
            "(or pass --no-host-key-check, which gives up MITM protection)"
        ) from None
    except asyncssh.PermissionDenied:
        raise HostError(f"{host}: SSH login as {options.user} refused (key or password not accepted)") from None
    except asyncssh.KeyImportError as err:
        raise HostError(f"cannot load the SSH key: {err}") from None
    except asyncssh.SFTPError as err:
        raise HostError(f"{host}: SFTP: {err.reason}") from None
    except asyncssh.Error as err:
        raise HostError(f"{host}: SSH: {err.reason}") from None
    except (OSError, TimeoutError) as err:
        raise HostError(f"{host}: cannot connect to port {options.port}: {err or 'timed out'}") from None


async def _ensure_dir(sftp: asyncssh.SFTPClient, options: SshOptions) -> None:
    path = options.remote_dir
    await sftp.makedirs(path, attrs=asyncssh.SFTPAttrs(permissions=0o700), exist_ok=True)
    attrs = await sftp.lstat(path)
    if attrs.permissions is None or not stat.S_ISDIR(attrs.permissions):
        raise HostError(f"{path} on the host is not a directory (a symbolic link?)")
    if attrs.permissions & 0o022:  # writable by others: anyone could swap the CA
        await sftp.chmod(path, stat.S_IMODE(attrs.permissions) & ~0o022)
    if options.owner:
        await sftp.chown(path, *options.owner)


async def _upload(sftp: asyncssh.SFTPClient, options: SshOptions, upload: Upload) -> None:
    final = f"{options.remote_dir}/{upload.name}"
    temp = f"{options.remote_dir}/.{upload.name}.{secrets.token_hex(4)}.tmp"
    # Created exclusively with its final mode, so a secret is never readable by others, even briefly.
    async with sftp.open(temp, "xb", attrs=asyncssh.SFTPAttrs(permissions=upload.mode)) as handle:
        await handle.write(upload.data)
    try:
        await sftp.chmod(temp, upload.mode)  # the server's umask may have narrowed it
        if options.owner:
            await sftp.chown(temp, *options.owner)
        try:
            await sftp.posix_rename(temp, final)
        except asyncssh.SFTPOpUnsupported:  # no atomic replace on this server: remove, then rename
            if await sftp.exists(final):
                await sftp.remove(final)
            await sftp.rename(temp, final)
    except BaseException:
        with contextlib.suppress(asyncssh.Error, OSError):
            await sftp.remove(temp)
        raise


# --- the actions ------------------------------------------------------------------------------------------
class Context:
    def __init__(self, cloud: AllInOne):
        self.cloud = cloud
        self._client: RpcClient | None = None

    @property
    def client(self) -> RpcClient:
        if self._client is None:
            self._client = self.cloud.admin_client()
        return self._client

    async def clc(self, operation: str, message: Any, answer: type) -> Any:
        url = self.cloud.endpoints()["clc"].url
        return await self.client.call(url, operation, message, answer, expect_role="clc", timeout=15)

    async def cc_url(self, args: argparse.Namespace) -> str:
        if args.cc_url:
            return args.cc_url.rstrip("/")
        clusters = (await self.clc("DescribeClusters", Empty(), msg.DescribeClustersResponse)).clusters
        if args.cluster:
            found = [c for c in clusters if c.zone == args.cluster]
            if not found:
                raise HostError(f"no cluster {args.cluster}; known: {', '.join(c.zone for c in clusters) or 'none'}")
            return found[0].url
        if len(clusters) != 1:
            raise HostError(f"{len(clusters)} clusters: say which with --cluster")
        return clusters[0].url

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


def _print_files(host: str, options: SshOptions, files: list[Upload]) -> None:
    for upload in files:
        print(f"{host}: {options.remote_dir}/{upload.name} ({upload.mode:04o})")


async def _sync_keys(ctx: Context, args: argparse.Namespace) -> int:
    host, options = _check_host(args.host), _ssh_options(args)
    files = component_files(ctx.cloud.pki, args.id, args.role)
    await push_files(host, options, files)
    _print_files(host, options, files)
    return 0


async def _register_cluster(ctx: Context, args: argparse.Namespace) -> int:
    host = _check_host(args.host)
    cc_id = args.id or f"cc-{args.zone}"
    if not args.no_sync:
        options = _ssh_options(args)
        files = component_files(ctx.cloud.pki, cc_id, "cc")
        await push_files(host, options, files)
        _print_files(host, options, files)
    url = args.url or f"http://{'[' + host + ']' if ':' in host else host}:{args.cc_port}"
    request = msg.RegisterClusterRequest(zone=args.zone, url=url, force=args.force)
    info = await ctx.clc("RegisterCluster", request, msg.ClusterInfo)
    print(f"CLUSTER\t{info.zone}\t{info.url}\t{info.source}\t{info.cc_id or '-'}")
    return 0


async def _deregister_cluster(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.clc("DeregisterCluster", msg.DeregisterClusterRequest(zone=args.zone), Empty)
    print(f"deregistered cluster {args.zone}")
    return 0


async def _list_clusters(ctx: Context, args: argparse.Namespace) -> int:
    for info in (await ctx.clc("DescribeClusters", Empty(), msg.DescribeClustersResponse)).clusters:
        state = "reachable" if info.reachable else "unreachable"
        print(f"CLUSTER\t{info.zone}\t{info.url}\t{info.source}\t{info.cc_id or '-'}\t{state}")
    return 0


def _node_entry(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _register_nodes(ctx: Context, args: argparse.Namespace) -> int:
    if args.id and len(args.hosts) > 1:
        raise HostError("--id names one node: give one host with it")
    hosts = [_check_host(host) for host in args.hosts]
    options = None if args.no_sync else _ssh_options(args)
    cc_url = await ctx.cc_url(args)
    failed = 0
    for host in hosts:  # one host's failure does not stop the others
        try:
            if options is not None:
                node_id = args.id or "nc-" + host.replace(":", "-")
                files = component_files(ctx.cloud.pki, node_id, "nc")
                await push_files(host, options, files)
                _print_files(host, options, files)
            request = clc_cc.RegisterNodeRequest(node=_node_entry(host, args.nc_port))
            info = await ctx.client.call(cc_url, "RegisterNode", request, clc_cc.NodeInfo, expect_role="cc")
            print(f"NODE\t{info.url}\t{info.state}\t{info.source}")
        except (HostError, pki.PkiError) as err:
            failed += 1
            print(f"koala admin: {err}", file=sys.stderr)
        except RpcError as err:
            failed += 1
            print(f"koala admin: {host}: {err.code}: {err.message}", file=sys.stderr)
    return 1 if failed else 0


async def _deregister_nodes(ctx: Context, args: argparse.Namespace) -> int:
    hosts = [_check_host(host) for host in args.hosts]
    cc_url = await ctx.cc_url(args)
    failed = 0
    for host in hosts:
        request = clc_cc.DeregisterNodeRequest(node=_node_entry(host, args.nc_port))
        try:
            await ctx.client.call(cc_url, "DeregisterNode", request, clc_cc.Ack, expect_role="cc")
            print(f"deregistered node {request.node}")
        except RpcError as err:
            failed += 1
            print(f"koala admin: {host}: {err.code}: {err.message}", file=sys.stderr)
    return 1 if failed else 0


async def _main(cloud: AllInOne, args: argparse.Namespace) -> int:
    ctx = Context(cloud)
    try:
        return await args.hosts_action(ctx, args)
    finally:
        await ctx.close()


def run(args: argparse.Namespace) -> int:
    """Run `args.hosts_action` with a Context on the cloud of `--state-dir` (also for cli/admin_migrate.py)."""
    cloud = AllInOne(args.state_dir)
    if not cloud.endpoints_path.exists():
        print(f"koala admin: no cloud in {cloud.dir}", file=sys.stderr)
        return 3
    try:
        return asyncio.run(_main(cloud, args))
    except (HostError, pki.PkiError) as err:
        print(f"koala admin: {err}", file=sys.stderr)
        return 1
    except (RpcError, PeerUnreachable) as err:
        print(f"koala admin: {err.code}: {err.message}", file=sys.stderr)
        return 1
    except ValueError as err:  # pydantic validation of zone names
        print(f"koala admin: {err}", file=sys.stderr)
        return 2
