"""The slot table as pure functions, over a table of cases in the manner of Haizea's papers (Sotomayor et al.,
HPDC 2008 and the 2009 OpenNebula capacity-leasing paper): advance reservations mapped across nodes, best-effort
leases queued FIFO with backfilling around a head reservation, and best-effort leases preempted (suspended)
before an advance reservation and resumed after it. Every expected schedule below was worked out by hand; the
comment beside each case shows the working."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from services.cloud_controller.leases.slottable import (
    INF,
    Allocation,
    Request,
    Res,
    SlotTable,
    how_many,
    plan_queue,
    preemptions,
)

CORE = Res(1, 1024, 10)
TWO = Res(2, 2048, 20)
THREE = Res(3, 3072, 30)


def nodes(count: int, cores: int) -> SlotTable:
    return SlotTable({f"n{i}": Res(cores, 1024 * cores, 10 * cores) for i in range(1, count + 1)})


def alloc(table: SlotTable, lease: str, picks: list[str], need: Res, start: float, end: float, kind, started=0.0):
    return table.allocate(lease, picks, need, start, end, kind, started)


# --- advance reservations: mapped across nodes, not just sums ---------------------------------------------------
@dataclass
class ArCase:
    name: str
    table: SlotTable
    need: Res
    count: int
    window: tuple[float, float]
    expected: list[str] | None


def _ar_cases() -> list[ArCase]:
    cases = []
    # Two 4-core nodes; AR1 holds 3 cores on each over [10, 20) (one 3-core VM per node): 1 core free per node,
    # 2 in sum. A 2-core VM over [15, 25) fits the sums but no node: refused.
    t = nodes(2, 4)
    alloc(t, "ar1", ["n1", "n2"], THREE, 10, 20, "reserved")
    cases.append(ArCase("fragmented: sums fit, nodes do not", t, TWO, 1, (15, 25), None))
    # The same VM right after AR1's window ([20, 30)): back to back, first fit -> n1.
    cases.append(ArCase("back to back after the window", t.copy(), TWO, 1, (20, 30), ["n1"]))
    # ... and right before it ([0, 10)): both nodes free, two 2-core VMs per node -> n1, n1, n2.
    cases.append(ArCase("before the window", t.copy(), TWO, 3, (0, 10), ["n1", "n1", "n2"]))
    # An on-demand instance (running, for ever) on n1 takes 2 of its 4 cores: over [10, 20) n1 has 4-2-3 < 0 ...
    # i.e. AR1 could no longer be placed on n1; a new 1-core AR over [12, 18) has n1: 4-2-3 = -1 -> 0 VMs,
    # n2: 4-3 = 1 -> 1 VM. Two VMs asked: refused; one: n2.
    t2 = nodes(2, 4)
    alloc(t2, "ar1", ["n1", "n2"], THREE, 10, 20, "reserved")
    alloc(t2, "i-od", ["n1"], TWO, 0, INF, "running")
    cases.append(ArCase("on-demand holds its node for ever", t2, CORE, 2, (12, 18), None))
    cases.append(ArCase("one VM still fits", t2.copy(), CORE, 1, (12, 18), ["n2"]))
    # Best-effort leases never stop an AR (they are preempted): 1 node of 2 cores, a spot lease on both cores.
    t3 = nodes(1, 2)
    alloc(t3, "sir-1", ["n1"], TWO, 0, INF, "besteffort")
    cases.append(ArCase("best-effort is preemptible", t3, TWO, 1, (5, 10), ["n1"]))
    # Haizea's figure of three overlapping ARs on 4 single-core nodes: ARa [0,10) 2 nodes, ARb [5,15) 2 nodes;
    # ARc [8,12) needs 1: at t in [8,10) all 4 are held -> refused; ARc' [10,12) needs 2: ARa is over -> n1, n2.
    t4 = nodes(4, 1)
    alloc(t4, "ara", ["n1", "n2"], CORE, 0, 10, "reserved")
    alloc(t4, "arb", ["n3", "n4"], CORE, 5, 15, "reserved")
    cases.append(ArCase("overlap of two ARs leaves nothing", t4, CORE, 1, (8, 12), None))
    cases.append(ArCase("after the first AR ends", t4.copy(), CORE, 2, (10, 12), ["n1", "n2"]))
    return cases


@pytest.mark.parametrize("case", _ar_cases(), ids=lambda c: c.name)
def test_advance_reservation_mapping(case: ArCase):
    start, end = case.window
    assert case.table.map_vms(case.need, case.count, start, end, preempt=True) == case.expected


def test_on_demand_refused_capacity_promised_to_a_coming_reservation():
    # Two 2-core nodes, an AR for both over [100, 200). An on-demand VM asked at t=0 runs for ever, so it must
    # fit beside the AR: no node has a free core over [0, inf) -> refused. Asked at t=200 (AR over) -> n1.
    table = nodes(2, 2)
    alloc(table, "ar", ["n1", "n2"], TWO, 100, 200, "reserved")
    assert table.map_vms(CORE, 1, 0, INF) is None
    assert table.map_vms(CORE, 1, 200, INF) == ["n1"]
    # Without the AR the same request fits at once.
    table.remove("ar")
    assert table.map_vms(CORE, 1, 0, INF) == ["n1"]


# --- best-effort queue: FIFO with backfilling ---------------------------------------------------------------------
@dataclass
class QueueCase:
    name: str
    table: SlotTable
    queue: list[Request]
    now: float
    started: dict[str, list[str]]
    shadow: tuple[str, float] | None
    waiting: list[str]


def _queue_cases() -> list[QueueCase]:
    cases = []
    # EASY backfilling (the classic figure): six single-core nodes; BE0 runs on n1, n2 until t=10.
    # R1 (5 VMs, 5 s) cannot start now: its shadow is t=10 on n1..n5. R2 (2 VMs, 5 s) fits now on n3, n4 and
    # ends at 5 <= 10: backfilled. R3 (1 VM, 20 s) would overlap the shadow on n5 but n6 is outside it:
    # backfilled on n6. R4 (1 VM, open-ended) has no node free of the shadow: waits.
    t = nodes(6, 1)
    alloc(t, "be0", ["n1", "n2"], CORE, 0, 10, "besteffort")
    queue = [
        Request("r1", CORE, 5, 5.0),
        Request("r2", CORE, 2, 5.0),
        Request("r3", CORE, 1, 20.0),
        Request("r4", CORE, 1, None),
    ]
    cases.append(
        QueueCase("EASY backfilling", t, queue, 0, {"r2": ["n3", "n4"], "r3": ["n6"]}, ("r1", 10), ["r1", "r4"])
    )
    # Strict FIFO when all fit: three single-VM requests on three free nodes start in order.
    t2 = nodes(3, 1)
    queue2 = [Request(f"r{i}", CORE, 1, None) for i in (1, 2, 3)]
    cases.append(QueueCase("all fit, in order", t2, queue2, 0, {"r1": ["n1"], "r2": ["n2"], "r3": ["n3"]}, None, []))
    # A backfill that would delay the head is refused: two single-core nodes, BE0 on n1 until 6; head R1 needs
    # 2 VMs for 3 s -> shadow t=6 on n1, n2. R2 (1 VM, 10 s) on n2 over [0, 10) would overlap: waits. R3 (1 VM,
    # 6 s) on n2 over [0, 6) ends as the head starts: backfilled.
    t3 = nodes(2, 1)
    alloc(t3, "be0", ["n1"], CORE, 0, 6, "besteffort")
    queue3 = [Request("r1", CORE, 2, 3.0), Request("r2", CORE, 1, 10.0), Request("r3", CORE, 1, 6.0)]
    cases.append(QueueCase("no delay to the head", t3, queue3, 0, {"r3": ["n2"]}, ("r1", 6), ["r1", "r2"]))
    # The head's reservation waits for an AR that holds a node now: AR on n1 over [0, 10), BE0 on n2 until 6;
    # R1 (2 VMs, 3 s): at 6 n1 is still reserved, at 10 both are free -> shadow t=10.
    t4 = nodes(2, 1)
    alloc(t4, "ar", ["n1"], CORE, 0, 10, "reserved")
    alloc(t4, "be0", ["n2"], CORE, 0, 6, "besteffort")
    cases.append(QueueCase("head waits for an AR", t4, [Request("r1", CORE, 2, 3.0)], 0, {}, ("r1", 10), ["r1"]))
    # A future AR does not stop a best-effort start (it will be preempted at the AR's start): one 2-core node,
    # AR over [10, 20) for both cores, an open-ended 1-core request at t=0 starts on n1.
    t5 = nodes(1, 2)
    alloc(t5, "ar", ["n1"], TWO, 10, 20, "reserved")
    cases.append(QueueCase("runs until the AR", t5, [Request("r1", CORE, 1, None)], 0, {"r1": ["n1"]}, None, []))
    # No known end anywhere (everything open-ended): the head has no shadow, smaller requests backfill.
    t6 = nodes(2, 2)
    alloc(t6, "od", ["n1"], TWO, 0, INF, "running")
    alloc(t6, "od2", ["n2"], CORE, 0, INF, "running")
    queue6 = [Request("big", TWO, 1, None), Request("small", CORE, 1, None)]
    cases.append(QueueCase("no end known: backfill", t6, queue6, 0, {"small": ["n2"]}, None, ["big"]))
    return cases


@pytest.mark.parametrize("case", _queue_cases(), ids=lambda c: c.name)
def test_queue_plan(case: QueueCase):
    before = case.table.copy()
    plan = plan_queue(case.table, case.queue, case.now)
    assert {r.lease_id: picks for r, picks in plan.start} == case.started
    assert plan.shadow == case.shadow
    assert plan.waiting == case.waiting
    assert case.table == before  # pure: the caller's table is unchanged


# --- preemption: suspend before the AR, resume after ------------------------------------------------------------
def test_best_effort_suspended_around_an_advance_reservation():
    # Haizea's running example: four single-core nodes, BE1 (4 VMs) started at t=0. An AR for 2 VMs over
    # [5, 8) arrives at t=2: accepted (best-effort does not count) on n1, n2.
    table = nodes(4, 1)
    alloc(table, "be1", ["n1", "n2", "n3", "n4"], CORE, 0, INF, "besteffort", started=0)
    picks = table.map_vms(CORE, 2, 5, 8)
    assert picks == ["n1", "n2"]
    table.allocate("ar", picks, CORE, 5, 8, "reserved")
    # Before the AR nothing is preempted; at its start BE1 is.
    assert preemptions(table, 4.9) == []
    assert preemptions(table, 5) == ["be1"]
    # BE1 suspended: back at the head of the queue. At t=5 only n3, n4 are free: it waits with a shadow at t=8,
    # the AR's end, when it resumes on all four nodes.
    table.remove("be1")
    plan = plan_queue(table, [Request("be1", CORE, 4, None)], 5)
    assert plan.start == [] and plan.shadow == ("be1", 8)
    plan = plan_queue(table, [Request("be1", CORE, 4, None)], 8)
    assert [(r.lease_id, p) for r, p in plan.start] == [("be1", ["n1", "n2", "n3", "n4"])]


def test_preemption_takes_the_most_recent_first_and_only_what_is_needed():
    # One 4-core node: spot a (2 cores, started t=1) and spot b (2 cores, started t=3); an AR for 2 cores over
    # [5, 10): at t=5 the node holds 6 of 4 cores -> b goes (started last), a stays.
    table = nodes(1, 4)
    alloc(table, "a", ["n1"], TWO, 1, INF, "besteffort", started=1)
    alloc(table, "b", ["n1"], TWO, 3, INF, "besteffort", started=3)
    alloc(table, "ar", ["n1"], TWO, 5, 10, "reserved")
    assert preemptions(table, 5) == ["b"]
    # A lease on two nodes goes as a whole: freeing n1 also frees n2 (nothing else preempted there).
    two = nodes(2, 1)
    alloc(two, "wide", ["n1", "n2"], CORE, 0, INF, "besteffort", started=0)
    alloc(two, "narrow", ["n2"], CORE, 0, INF, "besteffort", started=2)  # over-committed n2 on purpose
    alloc(two, "ar", ["n1"], CORE, 5, 9, "reserved")
    assert preemptions(two, 6) == ["wide"]


def test_free_counts_the_peak_over_the_window_and_ends_before_starts():
    table = nodes(1, 4)
    alloc(table, "x", ["n1"], TWO, 0, 10, "reserved")
    alloc(table, "y", ["n1"], TWO, 10, 20, "reserved")  # starts as x ends: never both
    assert table.free("n1", 0, 20) == Res(2, 2048, 20)
    alloc(table, "z", ["n1"], CORE, 5, 15, "running")
    assert table.free("n1", 0, 20) == Res(1, 1024, 10)
    assert table.free("n1", 15, 20) == Res(2, 2048, 20)
    assert how_many(Res(4, 4096, 15), TWO) == 0  # the disk limits it
    assert how_many(Res(4, 4096, 40), TWO) == 2


def test_allocations_per_node_sum_the_vms():
    table = nodes(2, 4)
    made = table.allocate("ar", ["n1", "n1", "n2"], CORE, 0, 5, "reserved")
    assert made == [
        Allocation("ar", "n1", 0, 5, Res(2, 2048, 20), "reserved"),
        Allocation("ar", "n2", 0, 5, Res(1, 1024, 10), "reserved"),
    ]
    assert set(table.leases("reserved")) == {"ar"}
    assert len(table.remove("ar")) == 2 and table.leases() == {}
