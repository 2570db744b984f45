"""MANAGED-NOVLAN for real, in network namespaces: an outside client, the CC as router, a node with its bridge,
guests (namespaces standing in for VMs, with their d0:0d: MACs and DHCP), and a metadata host.

The CC's network manager runs in this process and applies everything through `ip netns exec <cc>`, so the
host's own rules are never touched. Traffic is real TCP (and HTTP, and DHCP) between the namespaces.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.hostcmd import SubprocessRunner
from common.messages.cc_nc import NetConfig
from common.messages.network import NetworkRule
from services.cluster_controller.network.dhcp import STARTUP_GRACE
from services.cluster_controller.network.manager import NetworkManager
from services.cluster_controller.network.settings import VnetSettings
from services.node_controller.network import NodeNetwork, NodeVnetSettings
from tests.doubles import RecordingRunner
from tests.network.topology import Topology

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

WEB, DB = "111122223333-web", "111122223333-db"
GUESTS = {  # role: (instance id, network, vlan, network index)
    "g1": ("i-0000000a", WEB, 10, 2),
    "g2": ("i-0000000b", WEB, 10, 3),
    "g3": ("i-0000000c", DB, 11, 2),
}
EIP = "10.99.0.50"
UNRELATED_FILTER = "-A FORWARD -s 203.0.113.7/32 -j DROP"
UNRELATED_NAT = "-A POSTROUTING -s 203.0.113.0/24 -j RETURN"


class Net:
    def __init__(self, topo: Topology, loop: asyncio.AbstractEventLoop, state_dir: Path):
        self.topo, self.loop, self.state_dir = topo, loop, state_dir
        self.settings = VnetSettings(
            VNET_MODE="MANAGED-NOVLAN",
            VNET_SUBNET="192.168.0.0",
            VNET_NETMASK="255.255.0.0",
            VNET_ADDRSPERNET=32,
            VNET_PUBINTERFACE="pub0",
            VNET_PRIVINTERFACE="priv0",
            VNET_PUBLICIPS="10.99.0.50-10.99.0.59",
            VNET_CLOUDIP="10.98.0.2",
            VNET_DNS="10.98.0.2",
            KOALA_VNET_METADATA_PORT=8773,
            KOALA_VNET_NETNS=topo.ns("cc"),
            KOALA_VNET_RECONCILE_SECONDS=3600,
        )
        self.manager = NetworkManager(self.settings, state_dir)
        self.ips: dict[str, str] = {}

    def call(self, coro):
        return self.loop.run_until_complete(coro)

    def rules(self, network: str, rules: list[NetworkRule]) -> None:
        vlan = 10 if network == WEB else 11
        self.call(self.manager.configure_network(network, vlan, rules))


def _build(topo: Topology) -> None:
    for role in ("out", "cc", "n1", "md", *GUESTS):
        topo.add_ns(role)
    topo.veth("out", "eth0", "cc", "pub0")
    topo.run("out", "ip", "addr", "add", "10.99.0.2/24", "dev", "eth0")
    topo.run("out", "ip", "addr", "add", "10.99.0.200/24", "dev", "eth0")
    topo.run("cc", "ip", "addr", "add", "10.99.0.1/24", "dev", "pub0")
    topo.veth("cc", "md0", "md", "eth0")
    topo.run("cc", "ip", "addr", "add", "10.98.0.1/30", "dev", "md0")
    topo.run("md", "ip", "addr", "add", "10.98.0.2/30", "dev", "eth0")
    topo.run("md", "ip", "route", "add", "192.168.0.0/16", "via", "10.98.0.1")
    topo.veth("cc", "priv0", "n1", "eth0")
    for role, (instance_id, *_) in GUESTS.items():
        mac = "d0:0d:" + ":".join(instance_id[2:][i : i + 2] for i in range(0, 8, 2))
        topo.veth("n1", f"v{role}", role, "eth0", mac_b=mac)
    # Rules and a chain that are not Koala's, in place before Koala starts: they must survive everything.
    topo.run("cc", "iptables", "-N", "OTHER-CHAIN")
    topo.run("cc", "iptables", "-A", "OTHER-CHAIN", "-p", "udp", "--dport", "9", "-j", "ACCEPT")
    topo.run("cc", "iptables", "-A", "FORWARD", "-s", "203.0.113.7", "-j", "DROP")
    topo.run("cc", "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "203.0.113.0/24", "-j", "RETURN")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    work = tmp_path_factory.mktemp("netns")
    topo = Topology(work)
    loop = asyncio.new_event_loop()
    try:
        _build(topo)
        net = Net(topo, loop, work / "cc")
        # The node: its bridge, made by the NC's network code, with the guests' links plugged in.
        node = NodeNetwork(
            NodeVnetSettings(
                VNET_MODE="MANAGED-NOVLAN", VNET_PUBINTERFACE="eth0", VNET_BRIDGE="br0", KOALA_VNET_NETNS=topo.ns("n1")
            )
        )
        assert loop.run_until_complete(node.ensure(vlan=10)) == "br0"
        for role in GUESTS:
            topo.run("n1", "ip", "link", "set", f"v{role}", "master", "br0")
        net.call(net.manager.start())
        for network, vlan in ((WEB, 10), (DB, 11)):
            net.call(net.manager.start_network(network, vlan))
        for role, (instance_id, _, vlan, index) in GUESTS.items():
            filled = net.call(net.manager.add_instance(instance_id, NetConfig(vlan=vlan, network_index=index)))
            net.ips[role] = filled.private_ip
            topo.spawn(role, "serve", role, "22", "80", "5432")
        topo.spawn("out", "serve", "out", "9000")
        table = [f"{ip}={GUESTS[role][0]}" for role, ip in net.ips.items()]
        topo.spawn("md", "metadata", "8773", *table)
        yield net
    finally:
        try:
            if "net" in locals():
                loop.run_until_complete(net.manager.teardown())
                loop.run_until_complete(net.manager.stop())
        finally:
            loop.close()
            topo.cleanup()


@pytest.fixture(scope="module")
def leased(net: Net) -> Net:
    """Every guest has asked DHCP for its address and configured what it got."""
    for role in GUESTS:
        answer = net.topo.dhcp(role)
        assert answer["ip"] == net.ips[role]
    return net


def test_dhcp_gives_each_guest_its_address(leased: Net) -> None:
    assert leased.ips == {"g1": "192.168.1.2", "g2": "192.168.1.3", "g3": "192.168.1.34"}
    routes = leased.topo.run("g3", "ip", "route").stdout
    assert "default via 192.168.1.33" in routes  # the router of the db network's subnet
    addresses = leased.topo.run("cc", "ip", "-4", "addr", "show", "priv0").stdout
    assert "192.168.1.1/27" in addresses and "192.168.1.33/27" in addresses


def test_authorized_port_from_authorized_cidr_only_and_revoke(leased: Net) -> None:
    net, topo = leased, leased.topo
    net.call(net.manager.assign_address(EIP, "", "i-0000000a"))
    net.rules(WEB, [NetworkRule(protocol="tcp", from_port=80, to_port=80, cidrs=["10.99.0.0/25"])])
    assert topo.connect("out", EIP, 80, source="10.99.0.2") == "10.99.0.2 g1"
    assert topo.connect("out", EIP, 80, source="10.99.0.200") == "TIMEOUT"  # outside the CIDR
    assert topo.connect("out", EIP, 22, source="10.99.0.2") == "TIMEOUT"  # port not authorized
    net.rules(WEB, [])  # revoke
    assert topo.connect("out", EIP, 80, source="10.99.0.2") == "TIMEOUT"
    net.rules(WEB, [NetworkRule(protocol="tcp", from_port=20, to_port=25, cidrs=["0.0.0.0/0"])])
    assert topo.connect("out", EIP, 22, source="10.99.0.200") == "10.99.0.200 g1"


def test_groups_isolated_unless_a_source_group_rule_allows(leased: Net) -> None:
    net, topo = leased, leased.topo
    net.rules(WEB, [])
    net.rules(DB, [])
    assert topo.connect("g1", net.ips["g3"], 5432) == "TIMEOUT"
    assert topo.connect("g3", net.ips["g1"], 80) == "TIMEOUT"
    assert topo.connect("g1", net.ips["g2"], 22) == "192.168.1.2 g2"  # inside the group
    net.rules(DB, [NetworkRule(protocol="tcp", from_port=5432, to_port=5432, source_networks=[WEB])])
    assert topo.connect("g1", net.ips["g3"], 5432) == "192.168.1.2 g3"
    assert topo.connect("g2", net.ips["g3"], 5432) == "192.168.1.3 g3"
    assert topo.connect("g1", net.ips["g3"], 22) == "TIMEOUT"  # only the authorized port
    assert topo.connect("g3", net.ips["g1"], 80) == "TIMEOUT"  # and only that way round


def test_elastic_ip_in_and_out(leased: Net) -> None:
    net, topo = leased, leased.topo
    net.call(net.manager.assign_address(EIP, "", "i-0000000a"))
    net.rules(WEB, [NetworkRule(protocol="tcp", from_port=80, to_port=80, cidrs=["0.0.0.0/0"])])
    assert topo.connect("out", EIP, 80) == "10.99.0.2 g1"
    assert topo.connect("g1", "10.99.0.2", 9000) == f"{EIP} out"  # leaves with its elastic IP
    assert topo.connect("g3", "10.99.0.2", 9000) == "10.99.0.1 out"  # no elastic IP: masqueraded
    _, addresses = net.call(net.manager.describe_public_addresses())
    assert {a.public_ip: a.instance_id for a in addresses if a.instance_id} == {EIP: "i-0000000a"}
    net.call(net.manager.unassign_address(EIP))
    assert topo.connect("out", EIP, 80) == "TIMEOUT"
    assert topo.connect("g1", "10.99.0.2", 9000) == "10.99.0.1 out"
    assert f"{EIP}/32" not in topo.run("cc", "ip", "-4", "addr", "show", "pub0").stdout


def test_guest_reaches_metadata_with_its_own_identity(leased: Net) -> None:
    for role, (instance_id, *_) in GUESTS.items():
        answer = leased.topo.get(role, "http://169.254.169.254/latest/meta-data/instance-id")
        assert answer == instance_id


def _rules(saved: str) -> list[str]:
    return [re.sub(r"\[\d+:\d+\]", "", line) for line in saved.splitlines() if not line.startswith("#")]


def test_reapplying_changes_nothing_and_foreign_rules_survive(leased: Net) -> None:
    net, topo = leased, leased.topo
    before = _rules(topo.iptables_save("cc"))
    addresses_before = topo.run("cc", "ip", "-4", "addr").stdout
    recorder = RecordingRunner(inner=SubprocessRunner(net.settings.KOALA_VNET_NETNS))
    net.manager.applier.runner = recorder
    net.manager.applier.dhcp.runner = recorder
    try:
        report = net.call(net.manager.converge())
    finally:
        net.manager.applier.runner = net.manager.runner
        net.manager.applier.dhcp.runner = net.manager.runner
    assert report is not None and not report.changed
    assert recorder.writes() == []  # only reads: ip -j, iptables-save, sysctl -n
    assert _rules(topo.iptables_save("cc")) == before
    assert topo.run("cc", "ip", "-4", "addr").stdout == addresses_before
    saved = topo.iptables_save("cc")
    assert UNRELATED_FILTER in saved and UNRELATED_NAT in saved and ":OTHER-CHAIN" in saved
    assert saved.count("-j KOALA-FORWARD") == 1  # the hook exactly once


def test_reconcile_heals_what_was_changed_behind_koalas_back(leased: Net) -> None:
    net, topo = leased, leased.topo
    net.rules(WEB, [NetworkRule(protocol="tcp", from_port=80, to_port=80, cidrs=["0.0.0.0/0"])])
    net.call(net.manager.assign_address(EIP, "", "i-0000000a"))
    want = _rules(topo.iptables_save("cc"))
    topo.run("cc", "iptables", "-F", "KOALA-G10")
    topo.run("cc", "iptables", "-t", "nat", "-D", "PREROUTING", "-j", "KOALA-PREROUTING")
    topo.run("cc", "ip", "addr", "del", "192.168.1.1/27", "dev", "priv0")
    topo.run("cc", "iptables", "-I", "FORWARD", "1", "-s", "198.51.100.9", "-j", "DROP")  # someone else's, later
    assert topo.connect("out", EIP, 80) != "10.99.0.2 g1"
    report = net.call(net.manager.converge())  # what the reconcile loop runs
    assert report is not None and report.changed
    assert topo.connect("out", EIP, 80) == "10.99.0.2 g1"
    saved = topo.iptables_save("cc")
    assert "-A FORWARD -s 198.51.100.9/32 -j DROP" in saved
    assert sorted(_rules(saved)) == sorted([*want, "-A FORWARD -s 198.51.100.9/32 -j DROP"])  # all back
    assert "192.168.1.1/27" in topo.run("cc", "ip", "-4", "addr", "show", "priv0").stdout


def test_a_freed_address_is_leased_to_the_next_guest(leased: Net) -> None:
    """g2 ends and a new instance (another MAC) gets its address: DHCP must answer the newcomer, not keep the
    address for the departed guest's lease. The departure restarts dnsmasq (to drop that lease) and the newcomer's
    entry comes a moment later, while dnsmasq may still ignore SIGHUP (its start-up): the CC reloads it once more
    when that moment is over."""
    net, topo = leased, leased.topo
    dhcp = net.manager.applier.dhcp
    recorder = RecordingRunner(inner=dhcp.runner)
    dhcp.runner = recorder
    original_mac = topo.run("g2", "cat", "/sys/class/net/eth0/address").stdout.strip()
    rounds = (("i-0000000b", "i-0000000d", "d0:0d:00:00:00:0d"), ("i-0000000d", "i-0000000b", original_mac))
    try:
        for old, new, mac in rounds:
            net.call(net.manager.remove_instance(old))
            filled = net.call(net.manager.add_instance(new, NetConfig(vlan=10, network_index=3)))
            assert filled.private_ip == "192.168.1.3" and filled.private_mac == mac
            net.call(asyncio.sleep(STARTUP_GRACE + 0.2))  # the CC's loop runs on meanwhile
            pid = str(dhcp.running_pid())
            assert recorder.commands.count(["kill", "-HUP", pid]) == 2, recorder.commands
            topo.run("g2", "ip", "addr", "flush", "dev", "eth0")
            topo.run("g2", "ip", "link", "set", "eth0", "address", mac)
            assert topo.dhcp("g2")["ip"] == "192.168.1.3"
    finally:
        dhcp.runner = recorder.inner
    leases = (net.state_dir / "network" / "dnsmasq.leases").read_text()
    assert "d0:0d:00:00:00:0d" not in leases and original_mac in leases


def test_restart_restores_the_network_from_the_database(leased: Net) -> None:
    net, topo = leased, leased.topo
    net.call(net.manager.assign_address(EIP, "", "i-0000000a"))
    net.rules(WEB, [NetworkRule(protocol="tcp", from_port=80, to_port=80, cidrs=["0.0.0.0/0"])])
    # Lose the live state as a reboot would (Koala's part only: chains, addresses, dnsmasq), stop the manager,
    # and start a new one on the same database.
    net.call(net.manager.teardown())
    net.call(net.manager.stop())
    assert "KOALA" not in topo.iptables_save("cc")
    assert topo.connect("out", EIP, 80) != "10.99.0.2 g1"
    net.manager = NetworkManager(net.settings, net.state_dir)
    net.call(net.manager.start())
    assert topo.connect("out", EIP, 80) == "10.99.0.2 g1"
    assert topo.dhcp("g2")["ip"] == "192.168.1.3"  # DHCP is back with its host entries
    assert [n.name for n in net.call(net.manager.describe_networks([]))] == [WEB, DB]


def test_teardown_removes_only_koala_state(leased: Net) -> None:
    net, topo = leased, leased.topo
    net.call(net.manager.teardown())
    saved = topo.iptables_save("cc")
    assert "KOALA" not in saved
    assert UNRELATED_FILTER in saved and UNRELATED_NAT in saved and ":OTHER-CHAIN" in saved
    addresses = topo.run("cc", "ip", "-4", "addr").stdout
    assert "192.168.1.1/27" not in addresses and "10.99.0.1/24" in addresses and "10.98.0.1/30" in addresses
    assert net.manager.applier.dhcp.running_pid() is None
    net.call(net.manager.converge())  # and back, for the fixture's own teardown
