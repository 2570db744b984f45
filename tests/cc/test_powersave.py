"""POWERSAVE end to end: an idle node is powered down, and woken with a real Wake-on-LAN magic packet (sent to
loopback) when an instance needs it; the instance starts once the node answers again."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from common.messages import clc_cc
from services.cluster_controller.power import magic_packet
from tests.cc.conftest import Cluster, make_cluster

MAC = "52:54:00:c0:ff:ee"


@pytest.fixture
def wol_listener() -> Iterator[socket.socket]:
    """What a sleeping machine's network card would hear: UDP port 9 on loopback."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 9))
    sock.settimeout(30)
    try:
        yield sock
    finally:
        sock.close()


def test_idle_node_sleeps_and_is_woken_for_an_instance(tmp_path, wol_listener: socket.socket) -> None:
    cloud, nodes, clc = make_cluster(
        tmp_path / "cloud",
        {"p": 4},
        cc_settings={
            "SCHEDPOLICY": "POWERSAVE",
            "POWER_IDLETHRESH": 1,
            "POWER_WAKETHRESH": 60,
            "KOALA_WOL_METHOD": "udp",
            "KOALA_WOL_BROADCAST": "127.0.0.1",
        },
    )
    try:
        h = Cluster(cloud, nodes, clc)
        node = nodes["p"]
        # Without a MAC address the node could not be woken, so it stays up however idle it is.
        h.wait(lambda: h.nodes_info().get("nc-p") and h.nodes_info()["nc-p"].state == "UP", "nc-p UP")
        h.call("RegisterNode", clc_cc.RegisterNodeRequest(node=node.url, mac=MAC), clc_cc.NodeInfo)
        h.wait(lambda: h.nodes_info()["nc-p"].state == "ASLEEP", "nc-p powered down", timeout=30)
        assert "PowerDown requested by cc-zone1" in node.log()
        node.kill()  # the machine is off now
        assert h.resources().max == 4  # a sleeping node still counts: it is woken when chosen

        answer = h.run(["i-0000a001"], reservation="r-0000a000")
        assert answer.instances[0].node_id == "nc-p" and not answer.instances[0].error
        packet, _ = wol_listener.recvfrom(1024)
        assert packet == magic_packet(MAC)
        assert h.nodes_info()["nc-p"].state == "WAKING"
        assert h.instances()["i-0000a001"].state == "Pending"

        node.start()  # the machine booted
        h.wait(lambda: h.instances()["i-0000a001"].state == "Extant", "the instance runs on the woken node")
        assert h.nodes_info()["nc-p"].state == "UP"
    finally:
        cloud.stop()
        clc.stop()
