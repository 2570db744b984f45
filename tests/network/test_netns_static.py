"""STATIC mode for real: the CC's DHCP server hands out the VNET_MACMAP pairs (no router, no iptables), and an
instance takes a free pair. SYSTEM mode: the CC touches nothing."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from common.messages.cc_nc import NetConfig
from services.cluster_controller.network.manager import NetworkManager, NetworkRequestError
from services.cluster_controller.network.settings import VnetSettings
from tests.network.topology import Topology

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]


def test_static_dhcp_serves_the_macmap(tmp_path: Path) -> None:
    topo = Topology(tmp_path)
    loop = asyncio.new_event_loop()
    manager = None
    try:
        for role in ("cc", "g1", "g2"):
            topo.add_ns(role)
        topo.run("cc", "ip", "link", "add", "br0", "type", "bridge")
        topo.run("cc", "ip", "link", "set", "br0", "up")
        topo.run("cc", "ip", "addr", "add", "10.50.0.1/24", "dev", "br0")
        for role, mac in (("g1", "d0:0d:aa:00:00:01"), ("g2", "d0:0d:aa:00:00:02")):
            topo.veth("cc", f"v{role}", role, "eth0", mac_b=mac)
            topo.run("cc", "ip", "link", "set", f"v{role}", "master", "br0")
        settings = VnetSettings(
            VNET_MODE="STATIC",
            VNET_SUBNET="10.50.0.0",
            VNET_NETMASK="255.255.255.0",
            VNET_ROUTER="10.50.0.254",
            VNET_DNS="10.50.0.53",
            VNET_PRIVINTERFACE="br0",
            VNET_MACMAP="d0:0d:aa:00:00:01=10.50.0.11 d0:0d:aa:00:00:02=10.50.0.12",
            KOALA_VNET_NETNS=topo.ns("cc"),
        )
        manager = NetworkManager(settings, tmp_path / "cc")
        loop.run_until_complete(manager.start())
        first = loop.run_until_complete(manager.add_instance("i-00000101", NetConfig()))
        second = loop.run_until_complete(manager.add_instance("i-00000102", NetConfig()))
        assert (first.private_mac, first.private_ip, first.public_ip) == ("d0:0d:aa:00:00:01",) + ("10.50.0.11",) * 2
        assert (second.private_mac, second.private_ip) == ("d0:0d:aa:00:00:02", "10.50.0.12")
        with pytest.raises(NetworkRequestError) as full:
            loop.run_until_complete(manager.add_instance("i-00000103", NetConfig()))
        assert full.value.code == "InsufficientAddressCapacity"
        for role, ip in (("g1", "10.50.0.11"), ("g2", "10.50.0.12")):
            answer = topo.dhcp(role)
            assert (answer["ip"], answer["router"], answer["dns"]) == (ip, "10.50.0.254", "10.50.0.53")
        assert "KOALA" not in topo.iptables_save("cc")  # STATIC: no rules of Koala's
    finally:
        if manager is not None:
            loop.run_until_complete(manager.teardown())
            loop.run_until_complete(manager.stop())
        loop.close()
        topo.cleanup()


def test_system_mode_touches_nothing_on_the_cc(tmp_path: Path) -> None:
    topo = Topology(tmp_path)
    loop = asyncio.new_event_loop()
    try:
        topo.add_ns("cc")
        before = topo.iptables_save("cc"), topo.run("cc", "ip", "-j", "addr").stdout
        manager = NetworkManager(VnetSettings(KOALA_VNET_NETNS=topo.ns("cc")), tmp_path / "cc")
        loop.run_until_complete(manager.start())
        net = loop.run_until_complete(manager.add_instance("i-00000201", NetConfig()))
        assert (net.private_mac, net.private_ip, net.bridge) == ("d0:0d:00:00:02:01", "", "")
        assert (topo.iptables_save("cc"), topo.run("cc", "ip", "-j", "addr").stdout) == before
        assert manager.applier.dhcp.running_pid() is None
        loop.run_until_complete(manager.stop())
    finally:
        loop.close()
        topo.cleanup()
