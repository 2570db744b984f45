"""The cluster's whole desired network state, computed as data from the CC's inputs (no side effects).

Inputs: the VNET settings, the networks the CLC started (with their rule sets), the instances with their
network entries, and the elastic-IP assignments. Output: devices, addresses, iptables chains (in the exact
form `iptables-save` prints them, so the applier can compare), the hooks into the built-in chains, DHCP
subnets and host entries, and sysctls. Everything Koala owns is recognisable: chains start with `KOALA-`,
devices with `koalabr` (and `<privif>.<vlan>`), addresses lie in VNET_SUBNET or the public pool.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from common.messages.network import NetworkRule
from services.cluster_controller.network.addressing import Subnet, subnet_for_vlan
from services.cluster_controller.network.settings import VnetError, VnetSettings, parse_macmap

CHAIN_PREFIX = "KOALA-"
BRIDGE_PREFIX = "koalabr"
METADATA_IP = ipaddress.IPv4Address("169.254.169.254")
FORWARD, PREROUTING, OUTPUT, POSTROUTING = (
    "KOALA-FORWARD",
    "KOALA-PREROUTING",
    "KOALA-OUTPUT",
    "KOALA-POSTROUTING",
)
# (table, built-in chain, Koala chain): one `-j` jump each, at the top of the built-in chain.
HOOKS = (
    ("filter", "FORWARD", FORWARD),
    ("nat", "PREROUTING", PREROUTING),
    ("nat", "OUTPUT", OUTPUT),
    ("nat", "POSTROUTING", POSTROUTING),
)


@dataclass(frozen=True)
class NetworkSpec:
    """A security group's network as the CLC described it."""

    name: str
    vlan: int
    rules: tuple[NetworkRule, ...] = ()


@dataclass(frozen=True)
class InstanceEntry:
    instance_id: str
    mac: str
    ip: str
    vlan: int = -1


@dataclass(frozen=True)
class Link:
    """A device Koala creates: a bridge, or a VLAN device on `parent` enslaved to `master`."""

    name: str
    kind: str  # "bridge" or "vlan"
    parent: str = ""
    vlan_id: int = 0
    master: str = ""


@dataclass(frozen=True)
class DhcpSubnet:
    tag: str
    network: ipaddress.IPv4Network
    router: str
    broadcast: str


@dataclass(frozen=True)
class DhcpHost:
    mac: str
    ip: str
    name: str


@dataclass
class DhcpSpec:
    interfaces: list[str]
    subnets: list[DhcpSubnet]
    hosts: list[DhcpHost]
    dns: list[str]


@dataclass
class Ownership:
    """Which addresses on which devices are Koala's to add and remove."""

    private_devices: set[str] = field(default_factory=set)
    private_range: ipaddress.IPv4Network | None = None
    private_prefixlen: int = 0
    public_device: str = ""
    public_pool: frozenset[ipaddress.IPv4Address] = frozenset()
    link_prefixes: tuple[str, ...] = ()  # names of devices Koala creates and removes

    def owns_address(self, device: str, address: ipaddress.IPv4Interface) -> bool:
        if device in self.private_devices or device.startswith(BRIDGE_PREFIX):
            if address == ipaddress.IPv4Interface(f"{METADATA_IP}/32"):
                return True
            if (
                self.private_range is not None
                and address.ip in self.private_range
                and address.network.prefixlen == self.private_prefixlen
            ):
                return True
        if device == self.public_device and address.network.prefixlen == 32:
            return address.ip in self.public_pool
        return False

    def owns_link(self, name: str) -> bool:
        return any(name.startswith(prefix) for prefix in self.link_prefixes)


@dataclass
class DesiredState:
    mode: str
    links: list[Link] = field(default_factory=list)
    addresses: dict[str, list[str]] = field(default_factory=dict)  # device -> ["a.b.c.d/len", ...]
    chains: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (table, chain) -> "-A ..." lines
    hooks: list[tuple[str, str, str]] = field(default_factory=list)
    dhcp: DhcpSpec | None = None
    sysctls: dict[str, str] = field(default_factory=dict)
    ownership: Ownership = field(default_factory=Ownership)
    networks: dict[str, Subnet] = field(default_factory=dict)  # network name -> its subnet


def group_chain(vlan: int) -> str:
    return f"{CHAIN_PREFIX}G{vlan}"


def bridge_name(vlan: int) -> str:
    return f"{BRIDGE_PREFIX}{vlan}"


def vlan_device(parent: str, vlan: int) -> str:
    name = f"{parent}.{vlan}"
    if len(name) > 15:
        raise VnetError(f"VLAN device name {name!r} is longer than 15 characters: shorten VNET_PRIVINTERFACE")
    return name


def _net(network: ipaddress.IPv4Network | ipaddress.IPv4Address | str) -> str:
    """An address or network as iptables-save prints it (always with a prefix length)."""
    if isinstance(network, ipaddress.IPv4Address):
        return f"{network}/32"
    return str(ipaddress.IPv4Network(network, strict=False))


def _match(rule: NetworkRule) -> str:
    """The protocol part of a rule, in iptables-save's canonical form."""
    if rule.protocol == "all":
        return ""
    if rule.protocol == "icmp":
        if rule.from_port < 0:
            return " -p icmp"
        code = f"/{rule.to_port}" if rule.to_port >= 0 else ""
        return f" -p icmp -m icmp --icmp-type {rule.from_port}{code}"
    if rule.from_port < 0 or (rule.from_port == 0 and rule.to_port == 65535):
        return f" -p {rule.protocol}"
    ports = str(rule.from_port) if rule.from_port == rule.to_port else f"{rule.from_port}:{rule.to_port}"
    return f" -p {rule.protocol} -m {rule.protocol} --dport {ports}"


def _source(network: str) -> str:
    return "" if network == "0.0.0.0/0" else f" -s {network}"


def _unique(lines: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(lines))


def compute(
    settings: VnetSettings,
    networks: Iterable[NetworkSpec],
    instances: Iterable[InstanceEntry],
    assignments: Mapping[str, str],
) -> DesiredState:
    """The desired state for the configured mode. Pure: same inputs, same output."""
    if settings.managed:
        return _managed(settings, list(networks), list(instances), dict(assignments))
    if settings.VNET_MODE == "STATIC":
        return _static(settings)
    return DesiredState(mode=settings.VNET_MODE)  # SYSTEM: only the nodes' bridge, nothing on the CC


def _static(settings: VnetSettings) -> DesiredState:
    subnet = settings.vnet_subnet
    router = settings.VNET_ROUTER or str(subnet.network_address + 1)
    broadcast = settings.VNET_BROADCAST or str(subnet.broadcast_address)
    hosts = [DhcpHost(mac, str(ip), f"static-{ip}".replace(".", "-")) for mac, ip in parse_macmap(settings.VNET_MACMAP)]
    dhcp = DhcpSpec(
        interfaces=[settings.VNET_PRIVINTERFACE],
        subnets=[DhcpSubnet("static", subnet, router, broadcast)],
        hosts=hosts,
        dns=[str(ip) for ip in settings.dns_servers()],
    )
    return DesiredState(mode="STATIC", dhcp=dhcp)


def _managed(
    settings: VnetSettings,
    networks: list[NetworkSpec],
    instances: list[InstanceEntry],
    assignments: dict[str, str],
) -> DesiredState:
    vlan_mode = settings.VNET_MODE == "MANAGED"
    whole = settings.vnet_subnet
    n = settings.VNET_ADDRSPERNET
    privif, pubif = settings.VNET_PRIVINTERFACE, settings.VNET_PUBINTERFACE
    cloud_ip = ipaddress.IPv4Address(settings.VNET_CLOUDIP)
    port = settings.metadata_port()
    state = DesiredState(mode=settings.VNET_MODE)
    networks = sorted(networks, key=lambda spec: spec.vlan)

    # Subnets, devices, router addresses.
    subnets: dict[str, Subnet] = {}
    by_vlan: dict[int, str] = {}
    for spec in networks:
        if spec.vlan in by_vlan:
            raise VnetError(f"networks {by_vlan[spec.vlan]!r} and {spec.name!r} share VLAN {spec.vlan}")
        by_vlan[spec.vlan] = spec.name
        subnets[spec.name] = subnet_for_vlan(whole, n, spec.vlan)
    state.networks = subnets
    addresses: dict[str, list[str]] = {privif: [f"{METADATA_IP}/32"]}
    dhcp_interfaces = [privif]
    for spec in networks:
        subnet = subnets[spec.name]
        router = f"{subnet.router}/{subnet.network.prefixlen}"
        if vlan_mode:
            bridge, device = bridge_name(spec.vlan), vlan_device(privif, spec.vlan)
            state.links.append(Link(bridge, "bridge"))
            state.links.append(Link(device, "vlan", parent=privif, vlan_id=spec.vlan, master=bridge))
            addresses.setdefault(bridge, []).append(router)
            dhcp_interfaces.append(bridge)
        else:
            addresses[privif].append(router)
    public_pool = settings.public_pool()
    for public_ip in sorted(assignments, key=socket.inet_aton):
        addresses.setdefault(pubif, []).append(f"{public_ip}/32")
    state.addresses = addresses
    state.ownership = Ownership(
        private_devices={privif},
        private_range=whole,
        private_prefixlen=32 - n.bit_length() + 1,
        public_device=pubif,
        public_pool=public_pool,
        link_prefixes=(BRIDGE_PREFIX, f"{privif}.") if vlan_mode else (BRIDGE_PREFIX,),
    )

    # filter: established first, then each network's chain for traffic to it, then drop the rest to guests.
    whole_text = _net(whole)
    forward = [f"-A {FORWARD} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]
    net_texts = {name: str(subnet.network) for name, subnet in subnets.items()}
    for spec in networks:
        net_text = net_texts[spec.name]
        chain = group_chain(spec.vlan)
        forward.append(f"-A {FORWARD} -d {net_text} -j {chain}")
        rules = [f"-A {chain} -s {net_text} -d {net_text} -j ACCEPT"]  # inside the group
        for rule in spec.rules:
            sources = list(rule.cidrs)
            sources += [net_texts[name] for name in rule.source_networks if name in net_texts]
            match = _match(rule)
            rules += [f"-A {chain}{_source(src)} -d {net_text}{match} -j ACCEPT" for src in sources]
        state.chains[("filter", chain)] = _unique(rules)
    forward.append(f"-A {FORWARD} -d {whole_text} -j DROP")
    forward.append(f"-A {FORWARD} -s {whole_text} -j ACCEPT")
    state.chains[("filter", FORWARD)] = forward

    # nat: metadata redirect, elastic IPs (DNAT in, SNAT out), masquerade for the rest.
    metadata = f"{cloud_ip}:{port}"
    prerouting = [
        f"-A {PREROUTING} -s {whole_text} -d {METADATA_IP}/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination "
        f"{metadata}"
    ]
    output: list[str] = []
    # The CLC finds the instance by its source address: metadata requests keep it.
    postrouting = [f"-A {POSTROUTING} -s {whole_text} -d {cloud_ip}/32 -p tcp -m tcp --dport {port} -j ACCEPT"]
    for public_ip in sorted(assignments, key=socket.inet_aton):
        private_ip = assignments[public_ip]
        prerouting.append(f"-A {PREROUTING} -d {public_ip}/32 -j DNAT --to-destination {private_ip}")
        output.append(f"-A {OUTPUT} -d {public_ip}/32 -j DNAT --to-destination {private_ip}")
        postrouting.append(f"-A {POSTROUTING} -s {private_ip}/32 ! -d {whole_text} -j SNAT --to-source {public_ip}")
    postrouting.append(f"-A {POSTROUTING} -s {whole_text} ! -d {whole_text} -j MASQUERADE")
    state.chains[("nat", PREROUTING)] = prerouting
    state.chains[("nat", OUTPUT)] = output
    state.chains[("nat", POSTROUTING)] = postrouting
    state.hooks = list(HOOKS)

    # DHCP: a subnet per network, a host entry per instance in a started network.
    hosts = []
    started_vlans = {spec.vlan for spec in networks}
    base, size = int(whole.network_address), whole.num_addresses
    for entry in sorted(instances, key=lambda e: e.instance_id):
        if not entry.ip or not entry.mac:
            continue
        try:
            offset = int.from_bytes(socket.inet_aton(entry.ip), "big") - base
        except OSError:
            continue
        if 0 <= offset < size and offset // n + 2 in started_vlans:  # the VLAN whose subnet holds the address
            hosts.append(DhcpHost(entry.mac.lower(), entry.ip, entry.instance_id))
    state.dhcp = DhcpSpec(
        interfaces=dhcp_interfaces,
        subnets=[
            DhcpSubnet(
                f"net{spec.vlan}",
                subnets[spec.name].network,
                str(subnets[spec.name].router),
                str(subnets[spec.name].broadcast),
            )
            for spec in networks
        ],
        hosts=hosts,
        dns=[str(ip) for ip in settings.dns_servers()],
    )
    state.sysctls = {  # slash form: interface names may hold dots
        "net/ipv4/ip_forward": "1",
        # Guests of different groups share the wire in MANAGED-NOVLAN: never tell them to bypass the router.
        "net/ipv4/conf/all/send_redirects": "0",
        f"net/ipv4/conf/{privif}/send_redirects": "0",
    }
    return state
