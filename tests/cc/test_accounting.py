"""The CC's capacity accounting for one node: reservations against the NC's own numbers."""

from __future__ import annotations

from common.messages.cc_nc import VmType
from services.cluster_controller.model import Instance, Node
from services.cluster_controller.placement import NodeState

SMALL = VmType(name="m1.small", cores=1, memory_mb=256, disk_gb=5)


def up_node() -> Node:
    node = Node(url="http://n1:8775", source="config")
    node.memory_max_mb, node.disk_max_gb, node.cores_max = 1024, 50, 4
    node.set_state(NodeState.UP)
    return node


def instance(n: int, confirmed_at: float | None = None) -> Instance:
    return Instance(f"i-0000000{n}", "r-00000001", "123", "http://n1:8775", SMALL, confirmed_at=confirmed_at)


def test_reservations_count_from_placement_and_release_gives_back() -> None:
    node = up_node()
    assert node.free() == (1024, 50, 4)
    a, b = instance(1), instance(2)
    node.reserve(a)
    node.reserve(b)
    node.reserve(a)  # twice is once
    assert node.free() == (512, 40, 2) and node.capacity().instances == 2
    assert node.idle_since is None
    node.release(a)
    node.release(a)
    assert node.free() == (768, 45, 3)
    node.release(b)
    assert node.free() == (1024, 50, 4) and node.idle_since is not None


def test_the_ncs_report_caps_what_the_cc_thinks_is_free() -> None:
    node = up_node()
    # The NC reported at t=10 with one instance it had accepted at t=5 and something else holding a core.
    node.nc_memory_mb, node.nc_disk_gb, node.nc_cores, node.reported_at = 768, 45, 2, 10.0
    seen = instance(1, confirmed_at=5.0)
    node.reserve(seen)
    assert node.free() == (768, 45, 2)  # the NC's numbers are lower than max - reserved (3 cores)
    # Placed after the report: the NC's numbers do not include it yet, so it is taken off them.
    in_flight = instance(2)
    node.reserve(in_flight)
    assert node.free() == (512, 40, 1)
    in_flight.confirmed_at = 12.0  # accepted after the report: still not in the NC's numbers
    assert node.free() == (512, 40, 1)
    # Terminated before the next report: released at once, but never more than the NC last said was free.
    node.release(seen)
    assert node.free() == (512, 40, 1)
    node.nc_memory_mb, node.nc_disk_gb, node.nc_cores, node.reported_at = 768, 45, 3, 20.0
    assert node.free() == (768, 45, 3)


def test_instances_the_polls_list_confirmed_count_once() -> None:
    # A poll's list arrived at t=10 with two instances the CC had placed but not heard of yet; the numbers asked
    # for after it count them. They are taken off once (by the numbers), not again as in flight.
    node = up_node()
    listed = [instance(1), instance(2)]
    for one in listed:
        node.reserve(one)
    assert node.free() == (512, 40, 2)
    for one in listed:
        one.confirmed_at = 10.0
    node.nc_memory_mb, node.nc_disk_gb, node.nc_cores, node.reported_at = 512, 40, 2, 10.0
    assert node.free() == (512, 40, 2)
    # One ends before the next poll: what it held is free at once, as the numbers counted it.
    node.release(listed[0], ended=True)
    assert node.free() == (768, 45, 3)


def test_down_and_disabled_nodes_take_nothing() -> None:
    node = up_node()
    node.set_state(NodeState.DOWN)
    assert node.capacity().state is NodeState.DOWN
    node.set_state(NodeState.UP)
    node.enabled = False
    assert node.capacity().state is NodeState.DOWN


def test_instances_on_a_down_node_are_reported_unknown() -> None:
    node = up_node()
    node.node_id = "nc-n1"
    running = instance(1, confirmed_at=1.0)
    running.state = "Extant"
    assert running.report(node).state == "Extant"
    node.set_state(NodeState.DOWN)
    assert running.report(node).state == "Unknown" and running.report(node).node_id == "nc-n1"
    running.state = "Teardown"
    assert running.report(node).state == "Teardown"
