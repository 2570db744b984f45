"""Two hosts for migration tests and benches: each a network namespace with its own libvirtd (cli/netns_libvirtd.py,
as the all-in-one cloud runs one in its router namespace: a private mount namespace with its own /run,
/etc/libvirt, /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt, so two daemons on one machine share
nothing, as two hosts would).

The hosts are joined by a link (the migration network) and each has a bridge for guests, joined to a shared
segment the test can reach from the root namespace (ping, SSH). Each libvirtd listens for TLS only, on its
migration address, with a certificate from the cloud's CA (cli/libvirt_tls.py); the NC talks to it over a unix
socket in the host's directory.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from cli import libvirt_tls
from cli.netns_libvirtd import NamespaceLibvirtd
from common import pki


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and result.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result


@dataclass
class LibvirtHost:
    name: str  # the NC id, e.g. nc-a
    netns: str
    address: str  # on the migration network
    dir: Path
    tls: libvirt_tls.TlsLayout | None = None
    daemon: NamespaceLibvirtd | None = None

    @property
    def uri(self) -> str:
        """How the NC (and the test) reach this libvirtd: its unix socket, where NamespaceLibvirtd puts it."""
        return NamespaceLibvirtd(self.netns, self.dir).uri

    @property
    def tls_uri(self) -> str:
        return f"qemu+tls://{self.address}/system"

    def start(self) -> None:
        assert self.tls is not None
        self.daemon = NamespaceLibvirtd(
            self.netns,
            self.dir,
            libvirtd_conf=self.tls.libvirtd_conf(self.address),
            qemu_conf=self.tls.qemu_conf() + f'migration_address = "{self.address}"\n',
            listen=True,
        )
        self.daemon.start()

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("virsh", "-c", self.uri, *args, check=check)

    def stop(self) -> None:
        if self.daemon is None:
            return
        for name in self.virsh("list", "--name", check=False).stdout.split():
            self.virsh("destroy", name, check=False)
        self.daemon.stop()
        self.daemon = None
        for pid in _pids_in(self.netns):
            sh("kill", "-9", str(pid), check=False)


def _pids_in(netns: str) -> list[int]:
    done = sh("ip", "netns", "pids", netns, check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


@dataclass
class TwoHosts:
    """Hosts `a` and `b`, each a network namespace with its own libvirtd: a migration link between them
    (10.99.0.1 and .2, private to the two namespaces), and in each a bridge for guests named as the cloud's
    VNET_BRIDGE, uplinked to `uplink` (a bridge in the root namespace: the cluster's private network). With
    `storage` (three octets, e.g. "10.247.0", whose .1 is an address of the root namespace: the CC's iSCSI portal),
    each host also gets a storage link to the root namespace (.5/.6 for `a`, .9/.10 for `b`) and a route to .1."""

    work: Path
    pki_dir: pki.PkiDir
    bridge: str
    uplink: str
    storage: str = ""
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    hosts: dict[str, LibvirtHost] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    def ns(self, role: str) -> str:
        return f"km{self.tag}-{role}"

    def build(self, names: tuple[str, str] = ("nc-a", "nc-b")) -> None:
        for role in ("a", "b"):
            sh("ip", "netns", "add", self.ns(role))
            self.namespaces.append(self.ns(role))
            sh("ip", "netns", "exec", self.ns(role), "ip", "link", "set", "lo", "up")
        a, b = self.ns("a"), self.ns("b")
        sh("ip", "link", "add", "mig0", "netns", a, "type", "veth", "peer", "name", "mig0", "netns", b)
        for index, (role, name) in enumerate(zip(("a", "b"), names, strict=True), start=1):
            ns = self.ns(role)
            address = f"10.99.0.{index}"
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{address}/24", "dev", "mig0")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "mig0", "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "add", self.bridge, "type", "bridge")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", self.bridge, "up")
            link = f"km{self.tag}{role}"
            sh("ip", "link", "add", link, "type", "veth", "peer", "name", "up0", "netns", ns)
            self.links.append(link)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "up0", "master", self.bridge, "up")
            sh("ip", "link", "set", link, "master", self.uplink, "up")
            directory = self.work / name
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o755)
            host = LibvirtHost(name, ns, address, directory)
            host.tls = libvirt_tls.install(self.pki_dir, name, [address], directory / "tls")
            if self.storage:
                self._storage_link(role, index)
            (directory / "instances").mkdir(exist_ok=True)
            (directory / "instances").chmod(0o755)
            self.hosts[role] = host
        for host in self.hosts.values():
            host.start()

    def _storage_link(self, role: str, index: int) -> None:
        ns, link = self.ns(role), f"km{self.tag}s{role}"
        ours, theirs = f"{self.storage}.{4 * index + 1}", f"{self.storage}.{4 * index + 2}"
        sh("ip", "link", "add", link, "type", "veth", "peer", "name", "st0", "netns", ns)
        self.links.append(link)
        sh("ip", "addr", "add", f"{ours}/30", "dev", link)
        sh("ip", "link", "set", link, "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{theirs}/30", "dev", "st0")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "st0", "up")
        sh("ip", "netns", "exec", ns, "ip", "route", "add", f"{self.storage}.1/32", "via", ours)

    def nc_settings(self, role: str) -> dict[str, object]:
        """The NC settings of host `role`: QEMU through its libvirtd, its bridge, live migration over TLS."""
        host = self.hosts[role]
        assert host.tls is not None
        return {
            "HYPERVISOR": "qemu",
            "KOALA_LIBVIRT_URI": host.uri,
            "VNET_BRIDGE": self.bridge,
            "KOALA_VNET_NETNS": host.netns,
            "INSTANCE_PATH": host.dir / "instances",
            "KOALA_NC_MIGRATION_URI": host.tls_uri,
            "KOALA_NC_MIGRATION_PKI": host.tls.client,
        }

    def cleanup(self) -> None:
        for host in self.hosts.values():
            try:
                host.stop()
            except Exception as err:  # keep tearing down
                print(f"stopping {host.name}: {err}")
        for link in self.links:
            sh("ip", "link", "del", link, check=False)
        for ns in self.namespaces:
            for pid in _pids_in(ns):
                sh("kill", "-9", str(pid), check=False)
            sh("ip", "netns", "del", ns, check=False)
        time.sleep(0.1)
        for host in self.hosts.values():
            shutil.rmtree(host.dir / "root" / "lib", ignore_errors=True)
