"""MANAGED mode's exact command plans (VLAN devices cannot be created on kernels without 8021q), on the CC
and on the NC, recorded by an injected runner; plus the NC's bridges for real in a namespace."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from common.hostcmd import SubprocessRunner
from common.messages.cc_nc import NetConfig
from services.cluster_controller.network.apply import Applier
from services.cluster_controller.network.dhcp import DhcpServer
from services.cluster_controller.network.manager import NetworkManager
from services.cluster_controller.network.settings import VnetSettings
from services.node_controller import network as ncnet
from tests.doubles import RecordingRunner
from tests.network.topology import Topology

SETTINGS = dict(
    VNET_MODE="MANAGED",
    VNET_SUBNET="192.168.0.0",
    VNET_NETMASK="255.255.0.0",
    VNET_ADDRSPERNET=32,
    VNET_PUBINTERFACE="pub0",
    VNET_PRIVINTERFACE="priv0",
    VNET_PUBLICIPS="10.99.0.50-10.99.0.59",
    VNET_CLOUDIP="10.98.0.2",
)


def _device(name: str, kind: str = "", master: str = "", parent: str = "", vlan: int = 0, addrs=()) -> dict:
    entry: dict = {"ifname": name, "flags": ["UP"], "addr_info": []}
    if kind:
        entry["linkinfo"] = {"info_kind": kind, "info_data": {"id": vlan} if vlan else {}}
    if master:
        entry["master"] = master
    if parent:
        entry["link"] = parent
    for cidr in addrs:
        ip, prefix = cidr.split("/")
        entry["addr_info"].append({"family": "inet", "local": ip, "prefixlen": int(prefix)})
    return entry


def _manager(tmp_path: Path, live: list[dict], sysctls: str = "1\n0\n0\n") -> tuple[NetworkManager, RecordingRunner]:
    runner = RecordingRunner(
        replies={
            ("ip", "-j", "-d", "addr", "show"): json.dumps(live),
            ("iptables-save",): "",
            ("sysctl", "-n"): sysctls,
        }
    )
    settings = VnetSettings(**SETTINGS)
    applier = Applier(runner, DhcpServer(runner, tmp_path / "network", start_wait=0))
    return NetworkManager(settings, tmp_path, runner=runner, applier=applier), runner


async def test_managed_cc_plan_creates_vlan_bridge_router_and_removes_stale(tmp_path: Path) -> None:
    live = [
        _device("priv0", addrs=["10.0.0.1/24"]),
        _device("pub0", addrs=["10.99.0.1/24", "10.99.0.57/32"]),  # .57: an elastic IP no longer assigned
        _device("koalabr12", "bridge", addrs=["192.168.1.65/27"]),  # a network that was stopped
        _device("priv0.12", "vlan", master="koalabr12", parent="priv0", vlan=12),
        _device("docker0", "bridge", addrs=["172.17.0.1/16"]),  # not Koala's
    ]
    manager, runner = _manager(tmp_path, live, sysctls="0\n1\n1\n")
    await manager.open()
    await manager.start_network("111122223333-default", 10)
    net = await manager.add_instance("i-0000abcd", NetConfig(vlan=10, network_index=5))
    assert (net.private_ip, net.private_mac, net.bridge) == ("192.168.1.5", "d0:0d:00:00:ab:cd", "koalabr10")
    link_plan = [c for c in runner.writes() if c[0] == "ip"]
    assert link_plan[:10] == [
        ["ip", "link", "del", "koalabr12"],
        ["ip", "link", "del", "priv0.12"],
        ["ip", "link", "add", "koalabr10", "type", "bridge"],
        ["ip", "link", "set", "koalabr10", "up"],
        ["ip", "link", "add", "link", "priv0", "name", "priv0.10", "type", "vlan", "id", "10"],
        ["ip", "link", "set", "priv0.10", "master", "koalabr10"],
        ["ip", "link", "set", "priv0.10", "up"],
        ["ip", "addr", "add", "169.254.169.254/32", "brd", "+", "dev", "priv0"],
        ["ip", "addr", "add", "192.168.1.1/27", "brd", "+", "dev", "koalabr10"],
        ["ip", "addr", "del", "10.99.0.57/32", "dev", "pub0"],
    ]
    assert ["ip", "link", "del", "docker0"] not in runner.writes()
    assert ["sysctl", "-q", "-w", "net/ipv4/ip_forward=1"] in runner.writes()
    restore = [i for c, i in zip(runner.commands, runner.inputs, strict=True) if c[0] == "iptables-restore"]
    assert restore and ":KOALA-G10 - [0:0]" in restore[0] and "-I FORWARD 1 -j KOALA-FORWARD" in restore[0]
    conf = (tmp_path / "network" / "dnsmasq.conf").read_text()
    assert "interface=koalabr10" in conf and "dhcp-range=set:net10,192.168.1.0,static,255.255.255.224" in conf
    assert (tmp_path / "network" / "dhcp-hosts").read_text() == "d0:0d:00:00:ab:cd,192.168.1.5,i-0000abcd\n"
    await manager.stop()


async def test_managed_cc_plan_is_empty_when_live_matches(tmp_path: Path) -> None:
    live = [
        _device("priv0", addrs=["169.254.169.254/32"]),
        _device("pub0", addrs=["10.99.0.1/24"]),
        _device("koalabr10", "bridge", addrs=["192.168.1.1/27"]),
        _device("priv0.10", "vlan", master="koalabr10", parent="priv0", vlan=10),
    ]
    manager, runner = _manager(tmp_path, live)
    await manager.open()
    await manager.start_network("111122223333-default", 10)
    assert [c for c in runner.writes() if c[0] == "ip"] == []
    await manager.stop()


def _links(*devices: dict) -> RecordingRunner:
    """A recording runner whose `ip -j -d link show` answers `devices`."""
    return RecordingRunner(replies={("ip", "-j", "-d", "link"): json.dumps(list(devices))})


async def test_nc_managed_plan_and_release() -> None:
    settings = ncnet.NodeVnetSettings(VNET_MODE="MANAGED", VNET_PUBINTERFACE="eth0")
    runner = _links(_device("eth0"))
    node = ncnet.NodeNetwork(settings, runner)
    assert await node.ensure(vlan=10, bridge="koalabr10") == "koalabr10"
    assert [c for c in runner.commands if c[1] != "-j"] == [
        ["ip", "link", "add", "koalabr10", "type", "bridge"],
        ["ip", "link", "set", "koalabr10", "up"],
        ["ip", "link", "add", "link", "eth0", "name", "eth0.10", "type", "vlan", "id", "10"],
        ["ip", "link", "set", "eth0.10", "master", "koalabr10"],
        ["ip", "link", "set", "eth0.10", "up"],
    ]
    runner = _links(
        _device("eth0"),
        _device("koalabr10", "bridge"),
        _device("eth0.10", "vlan", master="koalabr10", parent="eth0", vlan=10),
        _device("koalabr11", "bridge"),
        _device("eth0.11", "vlan", master="koalabr11", parent="eth0", vlan=11),
    )
    node = ncnet.NodeNetwork(settings, runner)
    await node.ensure(vlan=10)
    assert [c for c in runner.commands if c[1] != "-j"] == []  # already there: nothing to do
    assert await node.release_unused(["koalabr10"]) == ["koalabr11"]
    assert [c for c in runner.commands if c[1] != "-j"] == [
        ["ip", "link", "del", "eth0.11"],
        ["ip", "link", "del", "koalabr11"],
    ]
    with pytest.raises(ncnet.NetworkError):
        await node.ensure(vlan=1)


@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
def test_nc_bridge_on_demand_in_a_namespace(tmp_path: Path) -> None:
    topo = Topology(tmp_path)
    try:
        topo.add_ns("node")
        topo.add_ns("peer")
        topo.veth("peer", "eth0", "node", "eth0")
        node = ncnet.NodeNetwork(
            ncnet.NodeVnetSettings(
                VNET_MODE="MANAGED-NOVLAN",
                VNET_PUBINTERFACE="eth0",
                VNET_BRIDGE="br0",
                KOALA_VNET_NETNS=topo.ns("node"),
            )
        )
        assert asyncio.run(node.ensure(vlan=10)) == "br0"
        links = topo.run("node", "ip", "-j", "-d", "link", "show").stdout
        by_name = {e["ifname"]: e for e in json.loads(links)}
        assert by_name["br0"]["linkinfo"]["info_kind"] == "bridge" and by_name["eth0"]["master"] == "br0"
        recorder = RecordingRunner(inner=SubprocessRunner(topo.ns("node")))
        node.runner = recorder
        asyncio.run(node.ensure(vlan=10))
        assert [c for c in recorder.commands if c[1] != "-j"] == []  # idempotent
        # MANAGED bridges go with their last guest (a bridge alone stands in: no 8021q here).
        managed = ncnet.NodeNetwork(
            ncnet.NodeVnetSettings(VNET_MODE="MANAGED", VNET_PUBINTERFACE="eth0", KOALA_VNET_NETNS=topo.ns("node"))
        )
        topo.run("node", "ip", "link", "add", "koalabr12", "type", "bridge")
        assert asyncio.run(managed.release_unused([])) == ["koalabr12"]
        names = {e["ifname"] for e in json.loads(topo.run("node", "ip", "-j", "link", "show").stdout)}
        assert "koalabr12" not in names and "br0" in names
    finally:
        topo.cleanup()


async def test_concurrent_changes_coalesce_and_the_database_matches_memory(tmp_path: Path) -> None:
    live = [_device("priv0"), _device("pub0", addrs=["10.99.0.1/24"])]
    manager, runner = _manager(tmp_path, live)
    await manager.open()
    names = [f"111122223333-g{i}" for i in range(12)]
    await asyncio.gather(*(manager.start_network(name, 10 + i) for i, name in enumerate(names)))
    rules = [ncrule(port) for port in range(20)]
    await asyncio.gather(*(manager.configure_network(names[0], 10, rules[: k + 1]) for k in range(20)))
    await asyncio.gather(
        *(manager.add_instance(f"i-0000{i:04x}", NetConfig(vlan=10 + i % 12, network_index=2)) for i in range(12))
    )
    await asyncio.gather(*(manager.assign_address("10.99.0.50", f"192.168.1.{32 * k + 2}", "") for k in range(6)))
    applies = sum(1 for c in runner.commands if c[0] == "iptables-save")
    assert applies < 12 + 20 + 12 + 6  # concurrent changes share applies
    memory = (dict(manager.networks), dict(manager.instances), dict(manager.addresses))
    await manager.stop()
    again, _ = _manager(tmp_path, live)
    await again.open()
    assert (again.networks, again.instances, again.addresses) == memory
    assert len(again.networks[names[0]].rules) in range(1, 21) and len(again.addresses) == 1
    await again.stop()


def ncrule(port: int):
    from common.messages.network import NetworkRule

    return NetworkRule(protocol="tcp", from_port=port + 1, to_port=port + 1, cidrs=["0.0.0.0/0"])
