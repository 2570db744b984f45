"""Placement policies and POWERSAVE's plans, deterministically, as pure functions."""

from __future__ import annotations

import pytest

from services.cluster_controller.placement import (
    POLICIES,
    Need,
    NodeCapacity,
    NodeState,
    greedy,
    load,
    packing,
    policy,
    roundrobin,
    slots,
    striping,
)
from services.cluster_controller.power import (
    PowerView,
    WakeError,
    magic_packet,
    nodes_to_power_down,
    wake_plan,
    waking_timed_out,
)

UP, DOWN, ASLEEP, WAKING = NodeState.UP, NodeState.DOWN, NodeState.ASLEEP, NodeState.WAKING
SMALL = Need(cores=1, memory_mb=512, disk_gb=5)


def node(key: str, cores: int = 4, mem: int = 2048, disk: int = 20, state: NodeState = UP, n: int = 0):
    return NodeCapacity(key, state, mem, disk, cores, n)


def test_slots_is_the_floor_of_the_scarcest_resource() -> None:
    assert slots(node("a", cores=4, mem=2048, disk=20), SMALL) == 4
    assert slots(node("a", cores=8, mem=1500, disk=100), SMALL) == 2  # memory bound
    assert slots(node("a", cores=8, mem=8192, disk=12), SMALL) == 2  # disk bound
    assert slots(node("a", cores=0), SMALL) == 0


def test_greedy_fills_nodes_in_order() -> None:
    nodes = [node("a", cores=2), node("b", cores=2), node("c", cores=2)]
    assert greedy(nodes, SMALL, 1).picks == [0]
    assert greedy(nodes, SMALL, 3).picks == [0, 0, 1]
    assert greedy(nodes, SMALL, 7).picks == [0, 0, 1, 1, 2, 2]  # only 6 fit


def test_greedy_skips_down_and_full_and_prefers_awake_over_asleep() -> None:
    nodes = [node("a", state=DOWN), node("b", cores=0), node("c", state=ASLEEP), node("d", cores=1)]
    plan = greedy(nodes, SMALL, 1)
    assert plan.picks == [3] and plan.wake == []
    plan = greedy(nodes, SMALL, 3)
    assert plan.picks == [3, 2, 2] and plan.wake == [2]


def test_waking_nodes_count_as_awake() -> None:
    nodes = [node("a", state=WAKING), node("b")]
    assert greedy(nodes, SMALL, 1).picks == [0]
    assert greedy(nodes, SMALL, 1).wake == []


def test_nodes_exactly_full() -> None:
    exact = Need(cores=2, memory_mb=1024, disk_gb=10)
    nodes = [node("a", cores=2, mem=1024, disk=10), node("b", cores=2, mem=1023, disk=10), node("c", cores=1)]
    for name, place in POLICIES.items():
        plan = place(nodes, exact, 5, 0)
        assert plan.picks == [0], name  # exactly fits once; one MiB short and one core short do not


def test_roundrobin_wraps_around_and_advances_the_cursor() -> None:
    nodes = [node("a"), node("b"), node("c")]
    plan = roundrobin(nodes, SMALL, 1, cursor=2)
    assert plan.picks == [2] and plan.cursor == 0
    plan = roundrobin(nodes, SMALL, 1, cursor=plan.cursor)
    assert plan.picks == [0] and plan.cursor == 1
    plan = roundrobin(nodes, SMALL, 5, cursor=1)
    assert plan.picks == [1, 2, 0, 1, 2] and plan.cursor == 0
    assert roundrobin(nodes, SMALL, 1, cursor=7).picks == [1]  # a stale cursor beyond the list still works


def test_roundrobin_batch_equals_one_by_one() -> None:
    nodes = [node("a", cores=1), node("b", state=DOWN), node("c", cores=3), node("d", cores=0), node("e", cores=2)]
    batch = roundrobin(nodes, SMALL, 10, cursor=3)
    cursor, one_by_one, left = 3, [], list(nodes)
    while True:
        plan = roundrobin(left, SMALL, 1, cursor)
        if not plan.picks:
            break
        index = plan.picks[0]
        one_by_one.append(index)
        n = left[index]
        left[index] = NodeCapacity(n.key, n.state, n.memory_mb - 512, n.disk_gb - 5, n.cores - 1, n.instances + 1)
        cursor = plan.cursor
    assert batch.picks == one_by_one == [4, 0, 2, 4, 2, 2]
    assert batch.cursor == cursor


def test_roundrobin_skips_only_down_and_wakes_asleep() -> None:
    nodes = [node("a", state=DOWN), node("b", state=ASLEEP), node("c")]
    plan = roundrobin(nodes, SMALL, 2, cursor=0)
    assert plan.picks == [1, 2] and plan.wake == [1]


def test_packing_puts_instances_where_most_already_run() -> None:
    nodes = [node("a", n=1), node("b", n=3), node("c", n=3)]
    assert packing(nodes, SMALL, 1).picks == [1]  # tie between b and c goes to the earlier node
    assert packing(nodes, SMALL, 6).picks == [1, 1, 1, 1, 2, 2]


def test_striping_spreads_over_the_emptiest() -> None:
    nodes = [node("a", n=2), node("b", n=0), node("c", n=1)]
    assert striping(nodes, SMALL, 1).picks == [1]
    assert striping(nodes, SMALL, 4).picks == [1, 1, 2, 0]


def test_load_prefers_most_free_cores_on_heterogeneous_nodes() -> None:
    nodes = [
        node("small", cores=2, mem=1024, disk=10),
        node("big", cores=8, mem=16384, disk=200),
        node("mid", cores=6, mem=1024, disk=200),  # many cores but memory for only two
    ]
    assert load(nodes, SMALL, 1).picks == [1]
    plan = load(nodes, SMALL, 6)
    assert plan.picks == [1, 1, 1, 2, 1, 2]  # big until it ties with mid at 6 free cores; ties go to the earlier node
    large = Need(cores=4, memory_mb=4096, disk_gb=50)
    for name, place in POLICIES.items():
        assert set(place(nodes, large, 3, 0).picks) == {1}, name  # only the big node takes the large type


def test_ranks_fall_back_to_sleeping_nodes() -> None:
    nodes = [node("a", state=ASLEEP, n=0), node("b", cores=1, n=0)]
    for place in (packing, striping, load):
        plan = place(nodes, SMALL, 2, 0)
        assert plan.picks == [1, 0] and plan.wake == [0]


def test_nothing_fits() -> None:
    nodes = [node("a", state=DOWN), node("b", cores=0)]
    for name, place in POLICIES.items():
        plan = place(nodes, SMALL, 3, 0)
        assert plan.picks == [] and plan.wake == [], name
    assert all(place([], SMALL, 1, 0).picks == [] for place in POLICIES.values())


def test_policies_do_not_mutate_their_snapshot() -> None:
    nodes = [node("a", n=1), node("b")]
    before = list(nodes)
    for place in POLICIES.values():
        place(nodes, SMALL, 5, 0)
    assert nodes == before


def test_policy_lookup() -> None:
    assert policy("greedy") is greedy and policy("POWERSAVE") is greedy
    with pytest.raises(ValueError, match="unknown SCHEDPOLICY"):
        policy("FASTEST")


# --- POWERSAVE ----------------------------------------------------------------------------------------------
def test_idle_nodes_go_to_sleep_after_the_threshold() -> None:
    views = [
        PowerView("busy", UP, instances=1, idle_since=None, mac="52:54:00:00:00:01"),
        PowerView("idle-long", UP, instances=0, idle_since=100.0, mac="52:54:00:00:00:02"),
        PowerView("idle-short", UP, instances=0, idle_since=350.0, mac="52:54:00:00:00:03"),
        PowerView("no-mac", UP, instances=0, idle_since=0.0, mac=""),  # could not be woken: stays up
        PowerView("down", DOWN, instances=0, idle_since=0.0, mac="52:54:00:00:00:05"),
        PowerView("asleep", ASLEEP, instances=0, idle_since=0.0, mac="52:54:00:00:00:06"),
    ]
    assert nodes_to_power_down(views, now=400.0, idle_threshold=300) == ["idle-long"]
    assert nodes_to_power_down(views, now=650.0, idle_threshold=300) == ["idle-long", "idle-short"]


def test_waking_nodes_time_out() -> None:
    assert waking_timed_out({"a": 10.0, "b": 100.0}, now=130.0, wake_threshold=60) == ["a"]


def test_wake_plan_magic_packet_and_commands() -> None:
    packet = magic_packet("52:54:00:AB:cd:0F")
    assert len(packet) == 102
    assert packet[:6] == b"\xff" * 6
    assert packet[6:12] == bytes([0x52, 0x54, 0x00, 0xAB, 0xCD, 0x0F])
    assert packet[6:] == bytes.fromhex("525400abcd0f") * 16
    plan = wake_plan("52-54-00-ab-cd-0f")
    assert plan.argv == () and plan.port == 9 and plan.broadcast == "255.255.255.255" and plan.packet == packet
    assert wake_plan("52:54:00:ab:cd:0f", "etherwake", interface="eth1").argv == (
        "etherwake",
        "-i",
        "eth1",
        "52:54:00:ab:cd:0f",
    )
    assert wake_plan("52:54:00:ab:cd:0f", "wakeonlan", broadcast="10.1.255.255").argv == (
        "wakeonlan",
        "-i",
        "10.1.255.255",
        "52:54:00:ab:cd:0f",
    )
    assert wake_plan("52:54:00:ab:cd:0f", "powerwake").argv == ("powerwake", "52:54:00:ab:cd:0f")
    with pytest.raises(WakeError):
        wake_plan("52:54:00:ab:cd", "udp")
    with pytest.raises(WakeError):
        wake_plan("52:54:00:ab:cd:0f", "etherwake")  # no interface
    with pytest.raises(WakeError):
        wake_plan("52:54:00:ab:cd:0f; reboot", "powerwake")
