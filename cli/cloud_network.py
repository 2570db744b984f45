"""The all-in-one cloud's network (MANAGED-NOVLAN): a router namespace and the one link to it, made by `koala up`.

    host (root ns)                                router namespace koala-<tag>  (the CC's VNET_NETNS)
      koala<tag>  HOST/24 ---- veth ---- pub0 ROUTER/24 + the public /32s     iptables (KOALA-* chains), NAT,
         (the one link to the public pool)                                   the metadata DNAT to ROUTER:port
                                           priv0, a bridge: the router addresses of the subnets, dnsmasq, and
                                             the guests' taps, made by the cloud's own libvirtd (DIR/libvirt,
                                             cli/netns_libvirtd.py) that runs in this namespace with QEMU
                                           ROUTER:port, a listening socket made here by `koala up` and handed to
                                             the CLC (KOALA_METADATA_FD): the metadata redirect's target

The host gains only that link and its connected route: no bridge, tap, route to the private subnet or iptables
rule. Metadata requests never leave the namespace: the CLC accepts them on a socket bound inside it, so they
keep the guest's own source address (the CLC finds the instance by it) and the answers go straight back out of
priv0, with no host route. The public /24 comes from 198.18.0.0/15 (RFC 2544, benchmarking: no LAN uses it) and
the private subnet from 100.64.0.0/10 (RFC 6598), the first blocks no route of the host already covers. What was
chosen is kept in DIR/network.json, so a later `koala up` rebuilds the same network. `teardown` removes all of
it (the libvirtd, its guests and dnsmasq go with the namespace's processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

from cli.netns_libvirtd import NamespaceLibvirtd
from common.hostcmd import CommandFailed, Result, SubprocessRunner

PUBLIC_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
PRIVATE_RANGE = ipaddress.IPv4Network("100.64.0.0/10")
PRIVATE_PREFIX = 16
PRIVATE_BRIDGE = "priv0"  # in the namespace: the CC's VNET_PRIVINTERFACE and the NC's VNET_BRIDGE
LOCK_PATH = Path("/run/lock/koala-network.lock")  # serialises choosing blocks among clouds on this host
LIBVIRT_CACHE = Path("/var/cache/koala/libvirt")  # QEMU's capabilities, probed once for every cloud on the machine


class CloudNetworkError(Exception):
    pass


_HOST = SubprocessRunner(timeout=60)


async def _run(*argv: str, check: bool = True) -> Result:
    try:
        return await _HOST.run(argv, check=check)
    except CommandFailed as err:
        raise CloudNetworkError(str(err)) from None


async def host_routes() -> list[ipaddress.IPv4Network]:
    """Every IPv4 destination the host routes (all tables), `default` left out."""
    out = (await _run("ip", "-j", "-4", "route", "show", "table", "all")).stdout
    found = []
    for entry in json.loads(out or "[]"):
        dst = entry.get("dst", "")
        if dst and dst != "default":
            with contextlib.suppress(ValueError):
                found.append(ipaddress.IPv4Network(dst, strict=False))
    return found


def _first_free(candidates: Iterator[ipaddress.IPv4Network], taken: list[ipaddress.IPv4Network]):
    for block in candidates:
        if not any(block.overlaps(route) for route in taken):
            return block
    return None


@dataclass(frozen=True)
class CloudNetwork:
    """Names and addresses of one cloud's network; `tag` comes from the state directory, so clouds differ."""

    tag: str
    public: str  # the link's /24: the host is .1, the router .2, the pool the rest
    private: str  # VNET_SUBNET/VNET_NETMASK

    @classmethod
    def choose(cls, state_dir: Path, public: str = "", private: str = "") -> CloudNetwork:
        """The network kept in DIR/network.json, or a new one (given blocks, else free ones)."""
        saved = state_dir / "network.json"
        if saved.exists():
            return cls(**json.loads(saved.read_text()))
        tag = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:6]
        taken = asyncio.run(host_routes())
        public_net = ipaddress.IPv4Network(public) if public else None
        private_net = ipaddress.IPv4Network(private) if private else None
        if public_net is None:
            public_net = _first_free(PUBLIC_RANGE.subnets(new_prefix=24), taken)
        if private_net is None:
            private_net = _first_free(PRIVATE_RANGE.subnets(new_prefix=PRIVATE_PREFIX), taken)
        if public_net is None or private_net is None:
            raise CloudNetworkError("no free block for the public pool or the private subnet: give --public-net")
        if public_net.prefixlen > 29:
            raise CloudNetworkError(f"{public_net}: the public network needs at least 8 addresses (/29)")
        if public_net.overlaps(private_net):
            raise CloudNetworkError(f"the public network {public_net} overlaps the private subnet {private_net}")
        for block in (public_net, private_net):
            clash = [str(r) for r in taken if r.overlaps(block)]
            if clash:
                raise CloudNetworkError(f"{block} overlaps the host's routes {', '.join(clash)}: pick another")
        return cls(tag, str(public_net), str(private_net))

    def save(self, state_dir: Path) -> None:
        (state_dir / "network.json").write_text(json.dumps(asdict(self), indent=2) + "\n")

    # --- names and addresses ----------------------------------------------------------------------------
    @property
    def netns(self) -> str:
        return f"koala-{self.tag}"

    @property
    def host_link(self) -> str:  # the one link to the public pool
        return f"koala{self.tag}"

    @property
    def links(self) -> tuple[str, ...]:
        """The cloud's links in the host's namespace: only the one to the public pool."""
        return (self.host_link,)

    def libvirtd(self, state_dir: Path) -> NamespaceLibvirtd:
        """The cloud's own libvirtd, in the router namespace: its guests' taps join priv0 there."""
        return NamespaceLibvirtd(self.netns, state_dir / "libvirt", cache=LIBVIRT_CACHE)

    @property
    def _public_net(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.public)

    @property
    def host_ip(self) -> str:
        return str(self._public_net.network_address + 1)

    @property
    def router_ip(self) -> str:
        return str(self._public_net.network_address + 2)

    @property
    def public_ips(self) -> str:
        """VNET_PUBLICIPS: the link's addresses after the host's and the router's."""
        net = self._public_net
        return f"{net.network_address + 3}-{net.broadcast_address - 1}"

    def cc_settings(self) -> dict[str, object]:
        private = ipaddress.IPv4Network(self.private)
        return {
            "VNET_MODE": "MANAGED-NOVLAN",
            "VNET_SUBNET": str(private.network_address),
            "VNET_NETMASK": str(private.netmask),
            "VNET_ADDRSPERNET": 32,
            "VNET_PUBINTERFACE": "pub0",
            "VNET_PRIVINTERFACE": PRIVATE_BRIDGE,
            "VNET_PUBLICIPS": self.public_ips,
            "VNET_CLOUDIP": self.router_ip,  # the CLC's metadata socket, inside the namespace
            "KOALA_VNET_NETNS": self.netns,
        }

    def nc_settings(self, state_dir: Path) -> dict[str, object]:
        return {
            "VNET_MODE": "MANAGED-NOVLAN",
            "VNET_BRIDGE": PRIVATE_BRIDGE,
            "KOALA_VNET_NETNS": self.netns,
            "KOALA_LIBVIRT_URI": self.libvirtd(state_dir).uri,
        }

    def metadata_socket(self, port: int, standby: bool = False) -> socket.socket:
        """A listening TCP socket on ROUTER:port inside the namespace, for the CLC to inherit. With `standby` (several
        CLCs, one active): bound with SO_REUSEPORT but not listening, so that every CLC gets one and only the
        active one, which listens on it when it takes over, is given the guests' connections."""
        return in_namespace(self.netns, lambda: _listener(self.router_ip, port, listen=not standby))

    # --- bring up and take down ----------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.netns in asyncio.run(_namespaces())

    async def ensure(self) -> None:
        """Create what is missing; what exists is left as it is (guests adopted after `koala down` keep it)."""
        if self.netns not in await _namespaces():
            await _run("ip", "netns", "add", self.netns)
        ns = ("ip", "netns", "exec", self.netns)
        await _run(*ns, "ip", "link", "set", "lo", "up")
        ns_links = await _links(self.netns)
        if PRIVATE_BRIDGE not in ns_links:
            await _run(*ns, "ip", "link", "add", PRIVATE_BRIDGE, "type", "bridge")
        await _run(*ns, "ip", "link", "set", PRIVATE_BRIDGE, "up")
        if self.host_link not in await _links() or "pub0" not in ns_links:
            await _run("ip", "link", "del", self.host_link, check=False)
            await _run(*ns, "ip", "link", "del", "pub0", check=False)
            await _run("ip", "link", "add", self.host_link, "type", "veth", "peer", "name", "pub0", "netns", self.netns)
        prefix = self._public_net.prefixlen
        # IPv4 only: no IPv6 link-local address, and so no route of it, on the host's end.
        await _run("sysctl", "-q", "-w", f"net.ipv6.conf.{self.host_link}.disable_ipv6=1", check=False)
        await _run("ip", "addr", "replace", f"{self.host_ip}/{prefix}", "dev", self.host_link)
        await _run("ip", "link", "set", self.host_link, "up")
        await _run(*ns, "ip", "addr", "replace", f"{self.router_ip}/{prefix}", "dev", "pub0")
        await _run(*ns, "ip", "link", "set", "pub0", "up")

    async def teardown(self) -> None:
        """Stop every process in the namespace (libvirtd with its guests, dnsmasq), remove the namespace and the
        link (its route goes with it). Idempotent."""
        if self.netns in await _namespaces():
            await _stop_processes(self.netns)
            await _run("ip", "netns", "del", self.netns, check=False)
        present = await _links()
        for link in (*self.links, f"koala{self.tag}br", f"koala{self.tag}pv"):  # and the host bridge of old clouds
            if link in present:
                await _run("ip", "link", "del", link, check=False)


@contextlib.contextmanager
def host_lock() -> Iterator[None]:
    """Held while a cloud chooses and creates its blocks, so two `koala up` runs never pick the same."""
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    with LOCK_PATH.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


async def _pids(netns: str) -> list[int]:
    listing = (await _run("ip", "netns", "pids", netns, check=False)).stdout
    return [int(pid) for pid in listing.split() if pid.isdigit()]


async def _stop_processes(netns: str, grace: float = 5.0) -> None:
    """SIGTERM every process in the namespace (the CC's dnsmasq), SIGKILL what is left after `grace` seconds."""
    for pid in await _pids(netns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 15)
    for _ in range(int(grace / 0.05)):
        if not await _pids(netns):
            return
        await asyncio.sleep(0.05)
    for pid in await _pids(netns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)


async def _namespaces() -> set[str]:
    listing = (await _run("ip", "netns", "list")).stdout
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


async def _links(netns: str = "") -> set[str]:
    argv = ("ip", "netns", "exec", netns, "ip", "-j", "link", "show") if netns else ("ip", "-j", "link", "show")
    return {entry["ifname"] for entry in json.loads((await _run(*argv)).stdout or "[]")}


T = TypeVar("T")
_CLONE_NEWNET = 0x40000000


def enter_namespace(path: str) -> None:
    """Move the calling thread (only it: setns is per thread) into the network namespace at `path`
    (/run/netns/NAME, /proc/PID/ns/net)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    with open(path) as handle:
        if libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
            raise CloudNetworkError(f"cannot enter {path}: {os.strerror(ctypes.get_errno())}")


def in_namespace(netns: str, make: Callable[[], T]) -> T:
    """`make()` run in a thread that entered network namespace `netns`; what it creates (a socket) stays in that
    namespace for good, and the caller's thread never leaves its own."""
    outcome: dict[str, object] = {}

    def work() -> None:
        try:
            enter_namespace(f"/run/netns/{netns}")
            outcome["value"] = make()
        except BaseException as err:  # handed to the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=work, name=f"setns {netns}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def _listener(address: str, port: int, listen: bool = True) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if not listen:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind((address, port))
    if listen:
        listener.listen(128)
    return listener
