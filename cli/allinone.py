"""`koala up|down|status`: the whole cloud on this machine (DESIGN section 10).

State directory layout (default /var/lib/koala as root, ~/.koala otherwise):
  pki/            the cloud CA, the cloud key pair, one certificate per component, `koala-admin` for tools
  conf/ROLE.conf  one configuration file per service
  data/ID/        each service's database and files
  logs/ROLE.log   each service's stderr
  run/ROLE.pid    pids of running services
  endpoints.json  each service's URL, id and role: the contract tests and tools rely on
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cli.scale_out import DOOR, SECOND_OF, add_members, free_port
from common import pki
from common.config import parse_conf, render_conf
from common.daemon import PidFile
from common.messages.service import DescribeServiceResponse
from common.rpc import PeerStandingBy, PeerUnreachable, RpcClient, RpcError
from common.signing import Identity, TrustStore

ROLES = ("clc", "walrus", "cc", "nc")  # start order
DEFAULT_PORTS = {"clc": 8773, "cc": 8774, "nc": 8775, "walrus": 8776}
ADMIN_ID = "koala-admin"
ZONE = "zone1"
NODE_ID = "nc-node1"
EBS_XFS_IMAGE_GB = 100  # the zone's volume store when the state directory is on ext4 (a sparse image: grows with use)
CLCS = ("clc", "clc2")
# What a process of the cloud answers `koala status`: its description, a standby CLC's 503, or why it did not answer
Answer = DescribeServiceResponse | PeerStandingBy | str


def default_state_dir() -> Path:
    if os.environ.get("KOALA_CLOUD_DIR"):
        return Path(os.environ["KOALA_CLOUD_DIR"])
    return Path("/var/lib/koala") if os.geteuid() == 0 else Path.home() / ".koala"


@dataclass
class Endpoint:
    role: str
    id: str
    url: str
    port: int


class AllInOne:
    """One cloud in one state directory."""

    def __init__(self, state_dir: Path, host: str = "127.0.0.1"):
        self.dir = state_dir.resolve()
        self.host = host
        self.pki = pki.PkiDir(self.dir / "pki")

    # --- layout ---------------------------------------------------------------------------------------
    def conf_path(self, role: str) -> Path:
        return self.dir / "conf" / (f"{role}.cfg" if role == DOOR else f"{role}.conf")

    def members(self) -> list[str]:
        """The cloud's processes in start order: the four services and, with `--scale-out`, the CLCs' door, a
        standby CLC and a second Walrus (cli/scale_out.py)."""
        found = []
        for role in ROLES:
            if role == "clc" and self.conf_path(DOOR).exists():
                found.append(DOOR)
            found.append(role)
            found += [second for second, of in SECOND_OF.items() if of == role and self.conf_path(second).exists()]
        return found

    def log_path(self, role: str) -> Path:
        return self.dir / "logs" / f"{role}.log"

    def pid_path(self, role: str) -> Path:
        return self.dir / "run" / f"{role}.pid"

    @property
    def endpoints_path(self) -> Path:
        return self.dir / "endpoints.json"

    def network(self):  # -> CloudNetwork | None (imported lazily: `koala --help` stays fast)
        """The cloud's MANAGED-NOVLAN network, when `koala up` made one (DIR/network.json)."""
        if not (self.dir / "network.json").exists():
            return None
        from cli.cloud_network import CloudNetwork

        return CloudNetwork.choose(self.dir)

    def endpoints(self) -> dict[str, Endpoint]:
        data = json.loads(self.endpoints_path.read_text())
        return {role: Endpoint(role, e["id"], e["url"], e["port"]) for role, e in data.items()}

    def status_endpoints(self) -> dict[str, Endpoint]:
        """Where `koala status` asks each process: the endpoints, except that with the CLCs' door (`--scale-out`)
        the `clc` endpoint is the door's, and the first CLC is asked on its own port beside it."""
        endpoints = self.endpoints()
        if not self.conf_path(DOOR).exists() or "clc" not in endpoints:
            return endpoints
        door = endpoints["clc"]
        port = int(parse_conf(self.conf_path("clc").read_text())["KOALA_CLC_PORT"].value)
        own = Endpoint("clc", door.id, f"http://{urllib.parse.urlsplit(door.url).hostname}:{port}", port)
        found = {}
        for role, endpoint in endpoints.items():
            found.update({DOOR: Endpoint(DOOR, door.id, door.url, door.port), "clc": own} if role == "clc" else
                         {role: endpoint})  # fmt: skip
        return found

    def prepare(
        self,
        ports: dict[str, int] | None = None,
        extra: dict[str, dict[str, object]] | None = None,
        ebs_port: int | None = None,
    ) -> None:
        """Create the PKI, configurations and endpoints.json, once; later calls reuse them."""
        if self.endpoints_path.exists():
            return
        ports = ports or {role: _port_available(self.host, port) for role, port in DEFAULT_PORTS.items()}
        for sub in ("conf", "data", "logs", "run"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        if not self.pki.exists():
            self.pki.init()
        ids = {"clc": "clc", "walrus": "walrus", "cc": f"cc-{ZONE}", "nc": NODE_ID}
        for role, subject in ids.items():
            self.pki.ensure(subject, role)
        self.pki.ensure(ADMIN_ID, "admin")
        url = {role: f"http://{self.host}:{ports[role]}" for role in ROLES}
        common = {"KOALA_PKI_DIR": self.pki.path, "KOALA_BIND": self.host}
        settings: dict[str, dict[str, object]] = {
            "clc": {
                "KOALA_CLC_PORT": ports["clc"],
                "KOALA_WALRUS_URL": url["walrus"],
                "KOALA_CLUSTERS": f"{ZONE}={url['cc']}",
            },
            "walrus": {"KOALA_WALRUS_PORT": ports["walrus"], "KOALA_CLC_URL": url["clc"]},
            "cc": {
                "CC_PORT": ports["cc"],
                "NODES": f"{self.host}:{ports['nc']}",
                "KOALA_ZONE": ZONE,
                "KOALA_CLC_URL": url["clc"],
                # EBS: the iSCSI portal (3260, shifted like the other ports), and snapshots kept in Walrus with the
                # admin's keys (written by the CLC at its first start).
                "KOALA_EBS_PORTAL": f"{self.host}:{ebs_port or 3260 + ports['clc'] - DEFAULT_PORTS['clc']}",
                "KOALA_EBS_S3_CREDENTIALS": self.admin_eucarc_source(),
            },
            "nc": {
                "NC_PORT": ports["nc"],
                "KOALA_CC_URL": url["cc"],
                "KOALA_WALRUS_URL": url["walrus"],
                "HYPERVISOR": "test",
            },
        }
        for role in ROLES:
            data_dir = self.dir / "data" / ids[role]
            data_dir.mkdir(parents=True, exist_ok=True)
            values = {
                "KOALA_SERVICE_ID": ids[role],
                "KOALA_STATE_DIR": data_dir,
                **common,
                **settings[role],
                **(extra or {}).get(role, {}),
            }
            self.conf_path(role).write_text(render_conf(values, f"Koala {role}, written by `koala up`."))
            self.conf_path(role).chmod(0o600)  # a database URL in it carries a password
        endpoints = {role: {"id": ids[role], "url": url[role], "port": ports[role], "role": role} for role in ROLES}
        self.endpoints_path.write_text(json.dumps(endpoints, indent=2) + "\n")

    # --- processes ------------------------------------------------------------------------------------
    def command(self, role: str) -> list[str]:
        if role == DOOR:
            return ["haproxy", "-f", str(self.conf_path(role))]
        return [sys.executable, "-m", "cli", SECOND_OF.get(role, role), "--config", str(self.conf_path(role))]

    def pid_file(self, role: str) -> PidFile:
        return PidFile(self.pid_path(role), str(self.conf_path(role)))  # its --config argument

    def running_pid(self, role: str) -> int | None:
        """The pid of this cloud's `role` service, if it runs (checked against its command line)."""
        return self.pid_file(role).running()

    def start(self, role: str, preexec_fn=None) -> subprocess.Popen:
        log = self.log_path(role).open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        inherited = self._inherited_socket(role)
        if inherited is not None:
            env["KOALA_METADATA_FD"] = str(inherited.fileno())
        try:
            process = subprocess.Popen(
                self.command(role),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=preexec_fn is None,
                preexec_fn=preexec_fn,
                cwd=self.dir,
                pass_fds=(inherited.fileno(),) if inherited is not None else (),
            )
        finally:
            log.close()
            if inherited is not None:
                inherited.close()  # the CLC has its own copy
        self.pid_file(role).write(process.pid)
        return process

    def _inherited_socket(self, role: str) -> socket.socket | None:
        """The CLC's metadata socket inside the router namespace (cli/cloud_network.py), when there is one; with
        two CLCs each gets one, on which it listens only while it is the active one."""
        network = self.network() if SECOND_OF.get(role, role) == "clc" else None
        if network is None:
            return None
        return network.metadata_socket(self.endpoints()["clc"].port, standby=self.conf_path("clc2").exists())

    def stop(self, role: str, timeout: float = 20.0) -> bool:
        return self.pid_file(role).stop(timeout)

    def healthy(self, role: str, timeout: float = 1.0) -> bool:
        endpoint = self.endpoints().get(role)
        if endpoint is None:  # the CLCs' door: judged through the `clc` endpoint, which it serves
            return True
        try:
            with urllib.request.urlopen(endpoint.url + "/healthz", timeout=timeout) as response:
                return response.status == 200
        except urllib.error.HTTPError as err:
            return role == "clc2" and err.code == 503  # standing by, ready to take over
        except OSError:
            return False

    def wait_healthy(self, processes: dict[str, subprocess.Popen], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        pending = set(processes)
        while pending:
            for role in list(pending):
                code = processes[role].poll()
                if code is not None:
                    raise RuntimeError(f"{role} exited with status {code}:\n{_tail(self.log_path(role))}")
                if self.healthy(role, timeout=0.5):
                    pending.discard(role)
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"not healthy after {timeout:.0f} s: {', '.join(sorted(pending))}")
            if pending:
                time.sleep(0.05)

    def admin_eucarc_source(self) -> Path:
        """Where the CLC writes the cloud admin's eucarc (and PEM files) at its first start."""
        return self.dir / "data" / "clc" / "admin" / "eucarc"

    def install_eucarc(self) -> Path | None:
        """Copy the admin's eucarc (absolute paths to the CLC's PEM files) to DIR/eucarc."""
        source = self.admin_eucarc_source()
        if not source.exists():
            return None
        pki.write_private(self.dir / "eucarc", source.read_bytes())
        return self.dir / "eucarc"

    def admin_client(self) -> RpcClient:
        identity = Identity.from_files(self.pki.cert_path(ADMIN_ID), self.pki.key_path(ADMIN_ID))
        return RpcClient(identity, TrustStore(pki.load_cert(self.pki.ca_path)), timeout=3.0, retries=1)

    async def describe_all(self) -> dict[str, Answer]:
        client = self.admin_client()
        try:

            async def one(endpoint: Endpoint) -> Answer:
                try:
                    return await client.call(endpoint.url, "DescribeService", None, DescribeServiceResponse)
                except PeerStandingBy as err:
                    return err
                except (RpcError, PeerUnreachable) as err:
                    return str(err)

            endpoints = self.status_endpoints()
            answers = await asyncio.gather(*(one(e) for e in endpoints.values()))
            return dict(zip(endpoints, answers, strict=True))
        finally:
            await client.close()

    def wait_peers(self, timeout: float = 30.0) -> dict[str, Answer]:
        """Wait until every service reports all its peers reachable; return the last answers."""
        deadline = time.monotonic() + timeout
        while True:
            answers = asyncio.run(self.describe_all())
            if cloud_is_fine(answers, peers=True) or time.monotonic() > deadline:
                return answers
            time.sleep(0.2)


def _clc_active(answers: dict[str, Answer]) -> bool:
    return any(isinstance(answers.get(role), DescribeServiceResponse) for role in CLCS)


def cloud_is_fine(answers: dict[str, Answer], peers: bool = False) -> bool:
    """Whether every process of the cloud answers (with `peers`: and reaches all its peers). A CLC standing by
    while another one is active is fine: that is its job (services/cloud_controller/standby.py)."""
    clc_active = _clc_active(answers)
    for role, answer in answers.items():
        if isinstance(answer, PeerStandingBy) and role in CLCS and clc_active:
            continue
        if not isinstance(answer, DescribeServiceResponse) or (peers and not all(p.reachable for p in answer.peers)):
            return False
    return True


def _env_port_base() -> int | None:
    """KOALA_PORT_BASE: --port-base's default (so a script written for the default ports runs elsewhere)."""
    text = os.environ.get("KOALA_PORT_BASE", "")
    return int(text) if text.isdigit() else None


class PortInUse(RuntimeError):
    """A service's port is taken by another listener: `koala up` says so rather than picking another port."""


def _port_available(host: str, port: int) -> int:
    # Probe as the services bind (SO_REUSEADDR): a port left in TIME_WAIT by `koala down` is free for them.
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise PortInUse(f"port {port} on {host} is in use ({err.strerror}); stop what listens there") from None
    return port


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- commands -------------------------------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction) -> None:
    for name, func, text in (
        ("up", _up, "bring up the whole cloud on this machine"),
        ("down", _down, "stop the cloud that `koala up` started (guests keep running unless --purge)"),
        ("status", _status, "say what runs and whether the services reach each other"),
    ):
        parser = subparsers.add_parser(name, help=text)
        parser.add_argument(
            "--state-dir",
            type=Path,
            default=default_state_dir(),
            help=f"state directory (default {default_state_dir()}; KOALA_CLOUD_DIR overrides it)",
        )
        if name == "up":
            parser.add_argument("--detach", action="store_true", help="return once all services are healthy")
            parser.add_argument(
                "--port-base",
                type=int,
                help="at first start, the CLC's port; the CC, NC and Walrus take the next three "
                "(default KOALA_PORT_BASE, else 8773)",
            )
            parser.add_argument(
                "--hypervisor",
                choices=["qemu", "kvm", "test"],
                help="the NC's hypervisor at first start (default: qemu when usable, else test)",
            )
            parser.add_argument(
                "--network",
                choices=["managed", "system"],
                default="managed",
                help="at first start: 'managed' (MANAGED-NOVLAN in a router namespace, the default) or 'system' "
                "(guests get no cloud network)",
            )
            parser.add_argument(
                "--public-net",
                default="",
                help="at first start: the public /24 (or smaller) the host reaches guests on "
                "(default: the first free /24 of 198.18.0.0/15)",
            )
            parser.add_argument(
                "--private-subnet",
                default="",
                help="at first start: the guests' private subnet (default: the first free /16 of 100.64.0.0/10)",
            )
            parser.add_argument(
                "--no-image", action="store_true", help="do not build and register the guest test image"
            )
            parser.add_argument(
                "--database",
                default="sqlite",
                metavar="sqlite|postgresql|URL",
                help="at first start, where the CLC keeps its state: sqlite (a file in its state directory, the "
                "default), postgresql (a PostgreSQL server of the cloud's own in DIR/postgres, Debian's postgresql "
                "package; with --ceph Walrus keeps its metadata there too) or a postgresql:// URL",
            )
            parser.add_argument(
                "--ceph",
                action="store_true",
                help="at first start: a single-node Ceph cluster in DIR/ceph (Debian's ceph packages) keeping "
                "Walrus's object data (RADOS) and the zone's EBS volumes (RBD)",
            )
            parser.add_argument(
                "--scale-out",
                action="store_true",
                help="at first start: --ceph --database postgresql, with two CLCs (one active, one standing by) "
                "behind HAProxy on the CLC's port and two Walrus front ends on one object store",
            )
        if name == "down":
            parser.add_argument(
                "--purge",
                action="store_true",
                help="also terminate every guest and remove the cloud's network and state directory",
            )
        if name == "status":
            parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.set_defaults(func=func)


def qemu_installed() -> bool:
    """True when QEMU and libvirt's daemons are installed: the cloud can run a libvirtd of its own."""
    from cli.netns_libvirtd import PROGRAMS

    return all(shutil.which(program) for program in PROGRAMS)


def qemu_usable() -> bool:
    """True when libvirtd answers on qemu:///system and QEMU is installed (software emulation is enough)."""
    if shutil.which("qemu-system-x86_64") is None or shutil.which("virsh") is None:
        return False
    probe = subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True, timeout=30)
    return probe.returncode == 0


def _first_prepare(cloud: AllInOne, args: argparse.Namespace) -> None:
    """The first `koala up` in a state directory: pick the hypervisor, build the network, write the configuration."""
    from cli.cloud_network import CloudNetwork, host_lock

    if args.database not in ("sqlite", "postgresql") and not args.database.startswith(("postgresql://", "postgres://")):
        raise ValueError(f"--database: sqlite, postgresql or a postgresql:// URL, not {args.database!r}")
    if args.scale_out:  # the engines several processes of a service share, here the cloud's own
        if args.database not in ("sqlite", "postgresql"):
            raise ValueError("--scale-out runs the cloud's own PostgreSQL server: leave out --database")
        if shutil.which("haproxy") is None:
            raise ValueError("--scale-out needs HAProxy in front of the CLCs (Debian's haproxy; deploy/bootstrap.sh)")
        args.ceph, args.database = True, "postgresql"
    managed = args.network == "managed"
    # A managed network brings a libvirtd of its own (in the router namespace); SYSTEM uses the host's.
    hypervisor = args.hypervisor or ("qemu" if (qemu_installed() if managed else qemu_usable()) else "test")
    extra: dict[str, dict[str, object]] = {"nc": {"HYPERVISOR": hypervisor}}
    ports = None  # checked before anything is made: a port in use leaves nothing behind
    port_base = args.port_base if args.port_base is not None else _env_port_base()
    if port_base is not None:
        wanted = {role: port_base + port - DEFAULT_PORTS["clc"] for role, port in DEFAULT_PORTS.items()}
        ports = {role: _port_available(cloud.host, port) for role, port in wanted.items()}
    else:
        for port in DEFAULT_PORTS.values():
            _port_available(cloud.host, port)
    cloud.dir.mkdir(parents=True, exist_ok=True)
    ceph_address = "127.0.0.1"
    if managed:
        with host_lock():
            network = CloudNetwork.choose(cloud.dir, args.public_net, args.private_subnet)
            network.save(cloud.dir)
            asyncio.run(network.ensure())
        extra["cc"] = network.cc_settings()
        # QEMU runs in the router namespace: it reaches the zone's iSCSI portal on the host's end of the link.
        shift = (ports["clc"] if ports else DEFAULT_PORTS["clc"]) - DEFAULT_PORTS["clc"]
        extra["cc"]["KOALA_EBS_PORTAL"] = f"{network.host_ip}:{3260 + shift}"
        ceph_address = network.host_ip  # and so does it reach Ceph's monitor and OSD, for RBD volumes
        nc = network.nc_settings(cloud.dir)
        if hypervisor == "test":  # no libvirtd: the test driver lives in the NC's process
            nc.pop("KOALA_LIBVIRT_URI")
        extra["nc"].update(nc)
        print(
            f"network: MANAGED-NOVLAN; router namespace {network.netns} (with the cloud's own libvirtd), public "
            f"addresses {network.public_ips} reached through {network.host_link}, private subnet {network.private}"
        )
    if args.ceph:
        from cli.ceph_local import EBS_POOL, WALRUS_POOL, CephCluster

        # Its daemons outlive this command, as the services do. They listen on the host's end of the link (made
        # above) with a managed network: QEMU, in the router namespace, opens RBD volumes itself.
        cluster = CephCluster.create(cloud.dir / "ceph", address=ceph_address)
        cluster.create_pool(WALRUS_POOL, "rados")
        cluster.create_pool(EBS_POOL, "rbd")
        for role, settings in cluster.koala_settings().items():
            extra.setdefault(role, {}).update(settings)
        print(f"ceph: monitor {cluster.mon_host}, pools {WALRUS_POOL} (Walrus objects) and {EBS_POOL} (EBS volumes)")
    if not args.ceph:
        # Volumes on an XFS image with reflinks where the state directory's file system has none (ext4): snapshots
        # after the first then read only what changed (services/cluster_controller/storage/volume_fs.py).
        extra.setdefault("cc", {})["KOALA_EBS_XFS_IMAGE_GB"] = EBS_XFS_IMAGE_GB
    for role, values in _first_database(cloud, args.database, args.ceph).items():
        extra.setdefault(role, {}).update(values)
    if args.scale_out:
        # The CLC's endpoint port goes to the door; the CLCs and the second Walrus take free ports.
        door = (ports or DEFAULT_PORTS)["clc"]
        clcs, walrus2 = (free_port(cloud.host), free_port(cloud.host)), free_port(cloud.host)
        extra.setdefault("clc", {}).update(
            {"KOALA_CLC_PORT": clcs[0], "KOALA_CLC_PUBLIC_URL": f"http://{cloud.host}:{door}"}
        )
    cloud.prepare(ports=ports, extra=extra)
    if args.scale_out:
        add_members(cloud, clcs, walrus2)
        print(
            f"scale-out: CLCs on ports {clcs[0]} and {clcs[1]} (one active, one standing by) behind HAProxy on {door}; "
            f"Walrus front ends on {cloud.endpoints()['walrus'].port} and {walrus2}"
        )
    why = (
        ""
        if args.hypervisor
        else (
            " (QEMU software emulation through libvirt)"
            if hypervisor == "qemu"
            else " (libvirt's test driver: libvirtd or QEMU is not installed here)"
        )
    )
    print(f"node controller hypervisor: {hypervisor}{why}")


def _first_database(cloud: AllInOne, choice: str, ceph: bool) -> dict[str, dict[str, object]]:
    """The settings that put the CLC's state (and with Ceph, Walrus's metadata) where `--database` says."""
    if choice == "sqlite":
        return {}
    if choice.startswith(("postgresql://", "postgres://")):
        print("database: the CLC's state in the PostgreSQL database given")
        return {"clc": {"KOALA_DATABASE_URL": choice}}
    from cli.postgres_local import LocalPostgres

    server = LocalPostgres.create(cloud.dir / "postgres")  # a daemon that outlives this command, as the services do
    settings: dict[str, dict[str, object]] = {"clc": {"KOALA_DATABASE_URL": server.ensure_database("clc")}}
    where = "the CLC's state"
    if ceph:  # Walrus's metadata beside it: more Walrus front ends can then serve the same object store
        settings["walrus"] = {
            "KOALA_WALRUS_DATABASE_URL": server.ensure_database("walrus"),
            "KOALA_WALRUS_RADOS_NAMESPACE": "walrus",
        }
        where += " and Walrus's metadata"
    print(f"database: PostgreSQL on 127.0.0.1:{server.port} (DIR/postgres) keeping {where}")
    return settings


def _postgres(cloud: AllInOne):  # -> LocalPostgres | None (imported lazily: `koala --help` stays fast)
    """The cloud's own PostgreSQL server, when `koala up --database postgresql` made one (DIR/postgres)."""
    if not (cloud.dir / "postgres" / "koala.json").exists():
        return None
    from cli.postgres_local import LocalPostgres

    return LocalPostgres(cloud.dir / "postgres")


def _up(args: argparse.Namespace) -> int:
    cloud = AllInOne(args.state_dir)
    running = cloud.endpoints_path.exists() and all(cloud.running_pid(role) for role in cloud.members())
    if running and _libvirtd_runs(cloud):
        print(f"a cloud already runs in {cloud.dir}; nothing changed")
        _print_status(cloud, asyncio.run(cloud.describe_all()))
        return 0
    if not cloud.endpoints_path.exists():
        try:
            _first_prepare(cloud, args)
        except Exception as err:  # a port taken, the network or the PKI could not be made: say why
            print(f"koala up: {err}", file=sys.stderr)
            return 1
    else:
        network = cloud.network()
        if network is not None:  # after `koala down`, or a reboot: put back what is missing
            from cli.cloud_network import host_lock

            with host_lock():
                asyncio.run(network.ensure())
        postgres = _postgres(cloud)
        if postgres is not None:  # after `koala down`, or a reboot
            postgres.start()
        ceph = _ceph(cloud)
        if ceph is not None:  # after `koala down`, or a reboot; after the network: it listens on the host's link
            ceph.start()
    daemon = _cloud_libvirtd(cloud)
    spawned = daemon.spawn() if daemon is not None else None  # starts beside the services: the NC waits for it
    processes = {}
    for role in cloud.members():
        if cloud.running_pid(role) is None:
            processes[role] = cloud.start(role)
    try:
        cloud.wait_healthy(processes)
        if daemon is not None:
            daemon.wait_ready(spawned)
    except Exception as err:  # a service or the cloud's libvirtd did not come up: say why
        print(f"koala up: {err}", file=sys.stderr)
        for role in processes:
            cloud.stop(role)
        return 1
    answers = cloud.wait_peers()
    _print_status(cloud, answers)
    eucarc = cloud.install_eucarc()
    if eucarc is not None:
        print(f"admin credentials: source {eucarc}")
        if not args.no_image:
            from cli.guest_image import GuestImageError, ensure_registered

            try:
                images = ensure_registered(cloud.dir, eucarc)
            except GuestImageError as err:
                print(f"koala up: the guest image is not registered: {err}", file=sys.stderr)
                return 1
            print("guest image: " + ", ".join(f"{kind} {image}" for kind, image in images.items()))
            _print_usage(eucarc, images.get("machine", "EMI"), cloud.network() is not None)
    print(f"\nstate: {cloud.dir}  (logs in {cloud.dir / 'logs'}; stop with: koala down --state-dir {cloud.dir})")
    if args.detach:
        return 0
    stop = {"now": False}

    def request_stop(*_: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    print("running in the foreground; Ctrl-C stops the cloud")
    while not stop["now"]:
        for role in cloud.members():
            process = processes.get(role)
            if process is not None and process.poll() is not None:
                print(
                    f"koala up: {role} exited with status {process.returncode}; see {cloud.log_path(role)}",
                    file=sys.stderr,
                )
                processes.pop(role)
        time.sleep(0.2)
    for role in reversed(cloud.members()):
        cloud.stop(role)
    ceph = _ceph(cloud)
    if ceph is not None:
        ceph.stop_detached()
    postgres = _postgres(cloud)
    if postgres is not None:
        postgres.stop()
    return 0


def _cloud_libvirtd(cloud: AllInOne):  # -> NamespaceLibvirtd | None (imported lazily)
    """The cloud's own libvirtd in its router namespace, when its NC uses one; it keeps running across
    `koala down` (the guests it runs are adopted by the next `koala up`) and ends with `koala down --purge`."""
    network = cloud.network()
    if network is None:
        return None
    daemon = network.libvirtd(cloud.dir)
    nc = parse_conf(cloud.conf_path("nc").read_text())
    if "KOALA_LIBVIRT_URI" not in nc or nc["KOALA_LIBVIRT_URI"].value != daemon.uri:
        return None  # libvirt's test driver, or a cloud made before it had a libvirtd of its own
    return daemon


def _libvirtd_runs(cloud: AllInOne) -> bool:
    daemon = _cloud_libvirtd(cloud)
    return daemon is None or daemon.running() is not None


def _ceph(cloud: AllInOne):  # -> CephCluster | None (imported lazily: `koala --help` stays fast)
    """The cloud's own Ceph cluster, when `koala up --ceph` made one (DIR/ceph)."""
    if not (cloud.dir / "ceph" / "ceph.conf").exists():
        return None
    from cli.ceph_local import CephCluster

    return CephCluster(cloud.dir / "ceph")


def _down(args: argparse.Namespace) -> int:
    cloud = AllInOne(args.state_dir)
    stopped = [role for role in reversed(cloud.members()) if cloud.stop(role)]
    ceph = _ceph(cloud)
    if ceph is not None:
        stopped += ceph.stop_detached()
    postgres = _postgres(cloud)
    if postgres is not None and postgres.stop():
        stopped.append("postgresql")
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    if args.purge:
        from cli.purge import purge

        for line in purge(cloud):
            print(line)
    return 0


def _status(args: argparse.Namespace) -> int:
    cloud = AllInOne(args.state_dir)
    if not cloud.endpoints_path.exists():
        print(f"no cloud in {cloud.dir} (start one with `koala up`)")
        return 3
    answers = asyncio.run(cloud.describe_all())
    if args.json:
        out = {}
        for role, endpoint in cloud.status_endpoints().items():
            answer = answers[role]
            out[role] = {
                "id": endpoint.id,
                "url": endpoint.url,
                "pid": cloud.running_pid(role),
                "running": isinstance(answer, DescribeServiceResponse | PeerStandingBy),
                "standby": isinstance(answer, PeerStandingBy),
                "peers": [p.model_dump() for p in answer.peers] if isinstance(answer, DescribeServiceResponse) else [],
                "error": answer if isinstance(answer, str) else None,
            }
        print(json.dumps(out, indent=2))
    else:
        _print_status(cloud, answers)
        network = cloud.network()
        if network is not None:
            state = "present" if network.exists() else "MISSING (koala up puts it back)"
            print(
                f"network MANAGED-NOVLAN: namespace {network.netns} {state}; public {network.public_ips} via "
                f"{network.host_link}; private {network.private}"
            )
            pid = network.libvirtd(cloud.dir).running()
            if pid is not None:
                print(f"libvirtd of the cloud: pid {pid} in {network.netns}")
    return 0 if cloud_is_fine(answers) else 1


def _print_status(cloud: AllInOne, answers: dict[str, Answer]) -> None:
    clc_active = _clc_active(answers)
    for role, endpoint in cloud.status_endpoints().items():
        answer = answers.get(role)
        pid = cloud.running_pid(role)
        if isinstance(answer, PeerStandingBy):
            where = "active elsewhere" if clc_active else "but NO CLC is active"
            print(f"{role:7} {endpoint.id:10} {endpoint.url:28} pid {pid}  standby ({where})")
        elif isinstance(answer, DescribeServiceResponse):
            peers = (
                ", ".join(f"{p.id or p.url} {'reachable' if p.reachable else 'UNREACHABLE'}" for p in answer.peers)
                or "no peers"
            )
            print(f"{role:7} {endpoint.id:10} {endpoint.url:28} pid {pid}  up {answer.uptime:.0f}s  peers: {peers}")
        else:
            print(
                f"{role:7} {endpoint.id:10} {endpoint.url:28} {'pid ' + str(pid) if pid else 'not running'}"
                f"  {answer or ''}"
            )


def _print_usage(eucarc: Path, machine_image: str, networked: bool) -> None:
    ssh = (
        f"""
  aws ec2 authorize-security-group-ingress --group-name default --protocol tcp --port 22 --cidr 0.0.0.0/0
  ID=$(aws ec2 run-instances --image-id {machine_image} --instance-type m1.small --key-name mykey \\
       --query 'Instances[0].InstanceId' --output text)
  aws ec2 wait instance-running --instance-ids $ID
  IP=$(aws ec2 describe-instances --instance-ids $ID --query 'Reservations[0].Instances[0].PublicIpAddress' \\
       --output text)
  ssh -i mykey.pem -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectionAttempts=60 root@$IP"""
        if networked
        else f"""
  aws ec2 run-instances --image-id {machine_image} --instance-type m1.small --key-name mykey"""
    )
    print(f"""
Use the cloud (the eucarc sets awscli's and boto3's endpoints and keys; aws is in {Path(sys.executable).parent}):
  source {eucarc}
  aws ec2 describe-images
  aws ec2 create-key-pair --key-name mykey --query KeyMaterial --output text > mykey.pem && chmod 600 mykey.pem{ssh}
  aws s3 ls""")
