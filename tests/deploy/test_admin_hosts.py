"""`koala admin sync-keys | register-nodes | deregister-nodes | register-cluster | deregister-cluster` against
a real asyncssh SSH/SFTP server in its own network namespace (rooted in a temporary directory, so nothing
touches the real /etc), with a real CLC, CC and NC; a second CC is started in the namespace from the keys that
register-cluster copied there.
"""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from common.config import parse_conf, render_conf
from common.messages import clc_cc
from common.messages import clusters as msg
from common.messages.service import DescribeServiceResponse
from common.rpc import Empty
from tests.clc.ec2_helpers import admin_creds, client
from tests.harness import Cloud, die_with_parent, free_port

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

SERVER = Path(__file__).with_name("sftp_server.py")
SSH_PORT = 2222
CC_PORT = 8774


@dataclass
class Site:
    cloud: Cloud
    ns: str
    host: str
    root: Path  # the SSH server's "/"
    key: Path
    known_hosts: Path
    work: Path

    def koala(self, *args: str, ssh: bool = True, key: Path | None = None, known: Path | None = None, port=SSH_PORT):
        options = ["--ssh-key", str(key or self.key), "--known-hosts", str(known or self.known_hosts)]
        options += ["--ssh-port", str(port), "--ssh-timeout", "5"]
        argv = [sys.executable, "-m", "cli", "admin", "--state-dir", str(self.cloud.dir), *args]
        result = subprocess.run(
            argv + (options if ssh else []), capture_output=True, text=True, timeout=60, cwd=self.work
        )
        assert "PRIVATE KEY" not in result.stdout + result.stderr
        return result


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("adminhosts")
    tag = secrets.token_hex(3)
    ns, outer, inner = f"kah-{tag}", f"kah{tag}a", f"kah{tag}b"
    net = f"10.214.{secrets.randbelow(250) + 1}"
    cloud = Cloud(work / "cloud", roles=("clc", "cc", "nc"))
    server = None
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns)
        sh("ip", "addr", "add", f"{net}.1/24", "dev", outer)
        sh("ip", "link", "set", outer, "up")
        for argv in (("ip", "link", "set", "lo", "up"), ("ip", "addr", "add", f"{net}.2/24", "dev", inner)):
            sh("ip", "netns", "exec", ns, *argv)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", inner, "up")
        # Keys: the server's host key, the admin's login key, and a key the server does not know.
        host_key, client_key = (
            asyncssh.generate_private_key("ssh-ed25519"),
            asyncssh.generate_private_key("ssh-ed25519"),
        )
        (work / "host_key").write_bytes(host_key.export_private_key())
        (work / "id_admin").write_bytes(client_key.export_private_key())
        (work / "id_other").write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
        for name in ("host_key", "id_admin", "id_other"):
            (work / name).chmod(0o600)
        (work / "authorized_keys").write_bytes(client_key.export_public_key())
        known = work / "known_hosts"
        known.write_bytes(f"[{net}.2]:{SSH_PORT} ".encode() + host_key.export_public_key())
        root = work / "root"
        root.mkdir()
        (work / "password").write_text(secrets.token_urlsafe(12) + "\n")
        files = [str(work / "host_key"), str(work / "authorized_keys"), str(root), str(work / "password")]
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, str(SERVER), f"{net}.2", str(SSH_PORT), *files],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=die_with_parent,
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "ready", server.stderr
        cloud.start()
        yield Site(cloud, ns, f"{net}.2", root, work / "id_admin", known, work)
    finally:
        cloud.stop()
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", outer], capture_output=True)


def remote(site: Site, name: str) -> Path:
    return site.root / "etc" / "koala" / "pki" / name


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def admin_call(site: Site, url: str, operation: str, message, answer, role: str):
    import asyncio

    async def go():
        client = site.cloud.admin_client()
        try:
            return await client.call(url, operation, message, answer, expect_role=role)
        finally:
            await client.close()

    return asyncio.run(go())


def test_sync_keys_puts_certificate_keys_and_cloud_key_pair_with_safe_modes(site: Site) -> None:
    result = site.koala("sync-keys", site.host, "--role", "walrus", "--id", "walrus")
    assert result.returncode == 0, result.stderr
    pki_dir = site.cloud.aio.pki.path
    for name in ("ca.pem", "walrus.pem", "walrus-key.pem", "cloud-cert.pem", "cloud-pk.pem"):
        assert remote(site, name).read_bytes() == (pki_dir / name).read_bytes(), name
    assert mode(remote(site, "walrus-key.pem")) == 0o600
    assert mode(remote(site, "cloud-pk.pem")) == 0o600
    assert mode(remote(site, "ca.pem")) == 0o644
    assert mode(remote(site, "")) & 0o077 == 0
    assert not [p for p in remote(site, "").iterdir() if p.name.endswith(".tmp")]
    # Running it again replaces the files in place.
    assert site.koala("sync-keys", site.host, "--role", "walrus", "--id", "walrus").returncode == 0


def test_password_login_and_remote_owner(site: Site) -> None:
    """A password from a file instead of a key; the files owned by the service user (numeric UID:GID)."""
    args = ["sync-keys", site.host, "--role", "clc", "--id", "clc", "--remote-dir", "/srv/koala/pki"]
    args += ["--remote-owner", "4242:4243", "--ssh-password-file", str(site.work / "password")]
    result = site.koala(*args, key=site.work / "id_other")  # that key is refused; the password is not
    assert result.returncode == 0, result.stderr
    target = site.root / "srv" / "koala" / "pki"
    for name in ("clc-key.pem", "cloud-pk.pem"):
        path = target / name
        assert (mode(path), path.stat().st_uid, path.stat().st_gid) == (0o600, 4242, 4243)
        assert path.read_bytes() == (site.cloud.aio.pki.path / name).read_bytes()
    assert (target.stat().st_uid, mode(target)) == (4242, 0o700)
    assert site.cloud.aio.pki.key_path("clc").read_text() not in result.stdout + result.stderr


def test_ssh_failures_are_clear_and_non_zero(site: Site) -> None:
    refused = site.koala("sync-keys", site.host, "--role", "nc", "--id", "nc-x", key=site.work / "id_other")
    assert refused.returncode == 1 and "refused" in refused.stderr
    unknown = site.work / "known_hosts_empty"
    unknown.write_text("")
    unverified = site.koala("sync-keys", site.host, "--role", "nc", "--id", "nc-x", known=unknown)
    assert unverified.returncode == 1 and "host key not verified" in unverified.stderr
    closed = site.koala("sync-keys", site.host, "--role", "nc", "--id", "nc-x", port=SSH_PORT + 1)
    assert closed.returncode == 1 and "cannot connect" in closed.stderr
    bad = site.koala("sync-keys", "bad host!", "--role", "nc", "--id", "nc-x")
    assert bad.returncode == 1 and "not a host name" in bad.stderr
    assert not remote(site, "nc-x.pem").exists()


def test_register_and_deregister_nodes(site: Site) -> None:
    cc_url = site.cloud.url("cc")
    result = site.koala("register-nodes", site.host, "--cluster", "zone1", "--nc-port", "8775")
    assert result.returncode == 0, result.stderr
    node_id = f"nc-{site.host}"
    assert remote(site, f"{node_id}-key.pem").read_bytes() == site.cloud.aio.pki.key_path(node_id).read_bytes()
    assert mode(remote(site, f"{node_id}-key.pem")) == 0o600
    assert "cloud-pk.pem" not in result.stdout  # NCs do not get the cloud key pair
    nodes = admin_call(site, cc_url, "DescribeNodes", Empty(), clc_cc.DescribeNodesResponse, "cc").nodes
    node_url = f"http://{site.host}:8775"
    assert [(n.url, n.source) for n in nodes if n.url == node_url] == [(node_url, "registered")]

    gone = site.koala("deregister-nodes", site.host, "--cluster", "zone1", ssh=False)
    assert gone.returncode == 0, gone.stderr
    nodes = admin_call(site, cc_url, "DescribeNodes", Empty(), clc_cc.DescribeNodesResponse, "cc").nodes
    assert node_url not in [n.url for n in nodes] and nodes  # the configured node stays
    again = site.koala("deregister-nodes", site.host, "--cluster", "zone1", ssh=False)
    assert again.returncode == 1 and "NodeNotFound" in again.stderr
    nowhere = site.koala("register-nodes", site.host, "--cluster", "nozone", "--no-sync", ssh=False)
    assert nowhere.returncode == 1 and "no cluster nozone" in nowhere.stderr


def _start_cc_in_namespace(site: Site) -> subprocess.Popen:
    """A second CC in the namespace, with only the keys register-cluster copied to the host."""
    base = {k: s.value for k, s in parse_conf(site.cloud.aio.conf_path("cc").read_text()).items()}
    state = site.work / "cc2"
    state.mkdir()
    values = {
        **base,
        "KOALA_SERVICE_ID": "cc-zone2",
        "KOALA_PKI_DIR": remote(site, ""),
        "KOALA_STATE_DIR": state,
        "KOALA_BIND": site.host,
        "CC_PORT": CC_PORT,
        "KOALA_ZONE": "zone2",
        "NODES": "",
    }
    conf = site.work / "cc2.conf"
    conf.write_text(render_conf(values, "second CC for test_admin_hosts"))
    log = (site.work / "cc2.log").open("wb")
    return subprocess.Popen(
        ["ip", "netns", "exec", site.ns, sys.executable, "-m", "cli", "cc", "--config", str(conf)],
        stdout=log,
        stderr=log,
        preexec_fn=die_with_parent,
    )


def _clusters(site: Site) -> dict[str, msg.ClusterInfo]:
    answer = admin_call(site, site.cloud.url("clc"), "DescribeClusters", Empty(), msg.DescribeClustersResponse, "clc")
    return {c.zone: c for c in answer.clusters}


def test_register_cluster_makes_the_clc_see_it_and_deregister_removes_it(site: Site) -> None:
    # The CC does not run yet: without --force the CLC refuses, with it the CLC registers and watches.
    refused = site.koala("register-cluster", "zone2", site.host, "--cc-port", str(CC_PORT))
    assert refused.returncode == 1 and "ClusterUnreachable" in refused.stderr
    result = site.koala("register-cluster", "zone2", site.host, "--cc-port", str(CC_PORT), "--force")
    assert result.returncode == 0, result.stderr
    assert mode(remote(site, "cc-zone2-key.pem")) == 0o600
    cc_url = f"http://{site.host}:{CC_PORT}"
    process = _start_cc_in_namespace(site)
    try:
        deadline = time.monotonic() + 30
        while not (info := _clusters(site).get("zone2")) or not info.reachable:
            assert process.poll() is None, (site.work / "cc2.log").read_text()
            assert time.monotonic() < deadline, info
            time.sleep(0.2)
        assert (info.url, info.source, info.cc_id) == (cc_url, "registered", "cc-zone2")
        assert _clusters(site)["zone1"].source == "config"
        described = admin_call(site, site.cloud.url("clc"), "DescribeService", None, DescribeServiceResponse, "clc")
        assert [(p.role, p.id, p.reachable) for p in described.peers if p.url == cc_url] == [("cc", "cc-zone2", True)]
        ec2 = client(site.cloud, admin_creds(site.cloud))  # the compute engine's CC client sees the zone
        assert "zone2" in [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]]
        listing = site.koala("clusters", ssh=False)
        assert f"zone2\t{cc_url}\tregistered\tcc-zone2\treachable" in listing.stdout

        in_config = site.koala("deregister-cluster", "zone1", ssh=False)
        assert in_config.returncode == 1 and "ClusterInConfig" in in_config.stderr
        assert site.koala("deregister-cluster", "zone2", ssh=False).returncode == 0
        assert "zone2" not in _clusters(site)
        assert "zone2" not in [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]]
        described = admin_call(site, site.cloud.url("clc"), "DescribeService", None, DescribeServiceResponse, "clc")
        assert cc_url not in [p.url for p in described.peers]
        missing = site.koala("deregister-cluster", "zone2", ssh=False)
        assert missing.returncode == 1 and "ClusterNotFound" in missing.stderr
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_registration_survives_a_clc_restart(site: Site) -> None:
    port = free_port()  # nothing listens: registered with --force, then the CLC restarts
    url = f"http://127.0.0.1:{port}"
    result = site.koala("register-cluster", "zone3", "127.0.0.1", "--url", url, "--no-sync", "--force", ssh=False)
    assert result.returncode == 0, result.stderr
    site.cloud.stop("clc")
    site.cloud.start("clc")
    info = _clusters(site)["zone3"]
    assert (info.url, info.source, info.reachable) == (url, "registered", False)
    assert site.koala("deregister-cluster", "zone3", ssh=False).returncode == 0
    # A service of this cloud that is not a CC (the NC) is refused, whatever --force says.
    nc_url = site.cloud.url("nc")
    wrong = site.koala("register-cluster", "zone4", "127.0.0.1", "--url", nc_url, "--no-sync", "--force", ssh=False)
    assert wrong.returncode == 1 and "ClusterRefused" in wrong.stderr and "zone4" not in _clusters(site)
