"""The all-in-one cloud's network (MANAGED-NOVLAN): a router namespace and the links to it, made by `koala up`.

    host (root ns)                                    router namespace koala-<tag>  (the CC's VNET_NETNS)
      koala<tag>  HOST/24 ---- veth ---- pub0 ROUTER/24 + the public /32s      iptables (KOALA-* chains),
         (the one link to the public pool; the CLC                          NAT, the metadata DNAT,
          also listens on HOST for the metadata redirect)                    dnsmasq on priv0
      koala<tag>br (bridge, no address) -- koala<tag>pv ---- veth ---- priv0 (router addresses of the subnets)
         + the guests' taps (libvirtd on the host puts them there)

The host gains only those links, the connected route of the public /24 and a route to the private subnet via
the router (the CLC answers metadata requests to the guests' own addresses); no host iptables rule. The public
/24 comes from 198.18.0.0/15 (RFC 2544, benchmarking: no LAN uses it) and the private subnet from 100.64.0.0/10
(RFC 6598), the first blocks no route of the host already covers. What was chosen is kept in
DIR/network.json, so a later `koala up` rebuilds the same network. `teardown` removes all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from common.hostcmd import CommandFailed, Result, SubprocessRunner

PUBLIC_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
PRIVATE_RANGE = ipaddress.IPv4Network("100.64.0.0/10")
PRIVATE_PREFIX = 16
LOCK_PATH = Path("/run/lock/koala-network.lock")  # serialises choosing blocks among clouds on this host


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
    def bridge(self) -> str:
        return f"koala{self.tag}br"

    @property
    def bridge_port(self) -> str:
        return f"koala{self.tag}pv"

    @property
    def links(self) -> tuple[str, ...]:
        return (self.host_link, self.bridge_port, self.bridge)

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
            "VNET_PRIVINTERFACE": "priv0",
            "VNET_PUBLICIPS": self.public_ips,
            "VNET_CLOUDIP": self.host_ip,
            "KOALA_VNET_NETNS": self.netns,
        }

    def nc_settings(self) -> dict[str, object]:
        return {"VNET_MODE": "MANAGED-NOVLAN", "VNET_BRIDGE": self.bridge}

    # --- bring up and take down ----------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.netns in asyncio.run(_namespaces())

    async def ensure(self) -> None:
        """Create what is missing; what exists is left as it is (guests adopted after `koala down` keep it)."""
        if self.netns not in await _namespaces():
            await _run("ip", "netns", "add", self.netns)
        ns = ("ip", "netns", "exec", self.netns)
        await _run(*ns, "ip", "link", "set", "lo", "up")
        root_links = await _links()
        if self.bridge not in root_links:
            await _run("ip", "link", "add", self.bridge, "type", "bridge")
        await _run("ip", "link", "set", self.bridge, "up")
        ns_links = await _links(self.netns)
        if self.bridge_port not in root_links or "priv0" not in ns_links:
            await _run("ip", "link", "del", self.bridge_port, check=False)
            await _run(*ns, "ip", "link", "del", "priv0", check=False)
            await _veth(self.bridge_port, "priv0", self.netns)
        await _run("ip", "link", "set", self.bridge_port, "master", self.bridge, "up")
        await _run(*ns, "ip", "link", "set", "priv0", "up")
        if self.host_link not in root_links or "pub0" not in ns_links:
            await _run("ip", "link", "del", self.host_link, check=False)
            await _run(*ns, "ip", "link", "del", "pub0", check=False)
            await _veth(self.host_link, "pub0", self.netns)
        prefix = self._public_net.prefixlen
        await _run("ip", "addr", "replace", f"{self.host_ip}/{prefix}", "dev", self.host_link)
        await _run("ip", "link", "set", self.host_link, "up")
        await _run(*ns, "ip", "addr", "replace", f"{self.router_ip}/{prefix}", "dev", "pub0")
        await _run(*ns, "ip", "link", "set", "pub0", "up")
        # Metadata answers from the CLC go back to the guests' own addresses, through the router.
        await _run("ip", "route", "replace", self.private, "via", self.router_ip, "dev", self.host_link)

    async def teardown(self) -> None:
        """Stop every process in the namespace (dnsmasq), remove the namespace and the links (their routes go
        with them). Idempotent."""
        if self.netns in await _namespaces():
            await _stop_processes(self.netns)
            await _run("ip", "netns", "del", self.netns, check=False)
        present = await _links()
        for link in self.links:
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


async def _veth(host_end: str, peer: str, netns: str) -> None:
    await _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", peer, "netns", netns)


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
