"""The slot table: every node's capacity through time, and the scheduling decisions made over it (pure).

In the manner of Haizea's slot table: each node has a capacity (cores, MiB, GB); allocations hold part of a node
over a time window [start, end) (end = INF for leases without a known end). Three kinds of allocation share it:
- `reserved`: an advance reservation (an EC2 Capacity Reservation) mapped to nodes for its window;
- `running`: an on-demand instance, from its launch for ever (nobody knows when it will be terminated);
- `besteffort`: a best-effort lease (a Spot instance), which may be preempted for the other two kinds.
Haizea keeps two capacities per node, with and without preemptible leases; here every question names which
allocations count (`preempt=True`: best-effort allocations are ignored, they would be preempted).

Decisions (nothing here does I/O or reads a clock; callers pass `now`):
- `map_vms`: put `count` VMs of one size on nodes for a window (first fit in node order, several VMs per node
  when they fit), or None. Advance reservations and on-demand launches ignore best-effort allocations.
- `plan_queue`: FIFO with backfilling for the best-effort queue. The first request that cannot start now gets a
  reservation at the earliest time it fits (the shadow); later requests start now only if they fit alongside it
  (so they never delay the head). Future advance reservations do not stop a best-effort start: the lease runs
  until the reservation needs the room and is preempted then (Haizea's suspend-before-the-AR).
- `preemptions`: the best-effort leases to preempt so that everything else fits at a given time, the most
  recently started first (the least work lost).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

INF = math.inf
Kind = Literal["reserved", "running", "besteffort", "shadow"]


class Res(NamedTuple):
    cores: int
    memory_mb: int
    disk_gb: int

    def __add__(self, other: object) -> Res:
        assert isinstance(other, Res)
        return Res(self.cores + other.cores, self.memory_mb + other.memory_mb, self.disk_gb + other.disk_gb)

    def times(self, count: int) -> Res:
        return Res(self.cores * count, self.memory_mb * count, self.disk_gb * count)

    def fits_in(self, capacity: Res) -> bool:
        return (
            self.cores <= capacity.cores and self.memory_mb <= capacity.memory_mb and self.disk_gb <= capacity.disk_gb
        )


ZERO = Res(0, 0, 0)


def how_many(free: Res, need: Res) -> int:
    """How many `need`s fit in `free` (component-wise floor)."""
    if not need.fits_in(free):
        return 0
    return min(
        free.cores // need.cores if need.cores else 1 << 30,
        free.memory_mb // need.memory_mb if need.memory_mb else 1 << 30,
        free.disk_gb // need.disk_gb if need.disk_gb else 1 << 30,
    )


@dataclass(frozen=True, slots=True)
class Allocation:
    lease_id: str
    node: str
    start: float
    end: float
    res: Res  # on this node (all of the lease's VMs there)
    kind: Kind
    started_at: float = 0.0  # best-effort: when the lease started (preemption order)

    def overlaps(self, start: float, end: float) -> bool:
        return self.start < end and start < self.end


@dataclass
class SlotTable:
    capacity: dict[str, Res]  # node -> capacity, in node order (dicts keep insertion order)
    allocations: dict[str, list[Allocation]] = field(default_factory=dict)  # node -> its allocations

    def copy(self) -> SlotTable:
        return SlotTable(dict(self.capacity), {n: list(a) for n, a in self.allocations.items()})

    def add(self, allocations: Iterable[Allocation]) -> None:
        for allocation in allocations:
            self.allocations.setdefault(allocation.node, []).append(allocation)

    def remove(self, lease_id: str) -> list[Allocation]:
        removed = []
        for node, items in self.allocations.items():
            kept = [a for a in items if a.lease_id != lease_id]
            if len(kept) != len(items):
                removed += [a for a in items if a.lease_id == lease_id]
                self.allocations[node] = kept
        return removed

    def leases(self, kind: Kind | None = None) -> dict[str, list[Allocation]]:
        found: dict[str, list[Allocation]] = {}
        for items in self.allocations.values():
            for a in items:
                if kind is None or a.kind == kind:
                    found.setdefault(a.lease_id, []).append(a)
        return found

    # --- what a node has free over a window ---------------------------------------------------------
    def free(self, node: str, start: float, end: float, preempt: bool = True, now: float | None = None) -> Res:
        """The least free capacity of `node` at any moment of [start, end), component-wise (an upper bound
        on what any VM set can use throughout). `preempt`: best-effort allocations do not count. `now` (for
        best-effort fits): reserved allocations that have not started by `now` do not count."""
        capacity = self.capacity[node]
        events: list[tuple[float, int, Res]] = []
        for a in self.allocations.get(node, ()):
            if preempt and a.kind == "besteffort":
                continue
            if now is not None and a.kind == "reserved" and a.start > now:
                continue
            if a.overlaps(start, end):
                events.append((max(a.start, start), 1, a.res))
                if a.end < end:
                    events.append((a.end, 0, a.res))
        if not events:
            return capacity
        events.sort(key=lambda e: (e[0], e[1]))  # ends before starts at the same instant
        used = [0, 0, 0]
        peak = [0, 0, 0]
        for _, starting, res in events:
            sign = 1 if starting else -1
            for i in range(3):
                used[i] += sign * res[i]
                if used[i] > peak[i]:
                    peak[i] = used[i]
        return Res(capacity.cores - peak[0], capacity.memory_mb - peak[1], capacity.disk_gb - peak[2])

    def map_vms(
        self,
        need: Res,
        count: int,
        start: float,
        end: float,
        preempt: bool = True,
        now: float | None = None,
        nodes: Sequence[str] | None = None,
    ) -> list[str] | None:
        """One node per VM (first fit in node order), or None if the `count` VMs do not all fit."""
        picks: list[str] = []
        for node in nodes if nodes is not None else self.capacity:
            if node not in self.capacity:
                continue
            room = how_many(self.free(node, start, end, preempt, now), need)
            take = min(room, count - len(picks))
            picks += [node] * take
            if len(picks) == count:
                return picks
        return None

    def map_most(
        self, need: Res, low: int, high: int, start: float, end: float, preempt: bool = True, now: float | None = None
    ) -> list[str] | None:
        """Like `map_vms` for as many VMs as fit, at most `high`; None if fewer than `low` fit."""
        picks: list[str] = []
        for node in self.capacity:
            room = how_many(self.free(node, start, end, preempt, now), need)
            picks += [node] * min(room, high - len(picks))
            if len(picks) == high:
                break
        return picks if len(picks) >= low else None

    def allocate(
        self, lease_id: str, picks: list[str], need: Res, start: float, end: float, kind: Kind, started_at: float = 0
    ) -> list[Allocation]:
        """Allocations for a mapping from `map_vms` (one per node), added to the table."""
        per_node: dict[str, int] = {}
        for node in picks:
            per_node[node] = per_node.get(node, 0) + 1
        made = [Allocation(lease_id, n, start, end, need.times(k), kind, started_at) for n, k in per_node.items()]
        self.add(made)
        return made

    def times_after(self, now: float) -> list[float]:
        """The moments after `now` at which some allocation ends: when room may appear."""
        return sorted({a.end for items in self.allocations.values() for a in items if now < a.end < INF})


# --- the best-effort queue --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    lease_id: str
    need: Res  # one VM
    count: int
    duration: float | None = None  # None: runs until terminated


@dataclass
class QueuePlan:
    start: list[tuple[Request, list[str]]] = field(default_factory=list)  # start now, on these nodes
    shadow: tuple[str, float] | None = None  # the head's reservation: (lease id, earliest start)
    waiting: list[str] = field(default_factory=list)  # in queue order


def plan_queue(table: SlotTable, queue: Sequence[Request], now: float) -> QueuePlan:
    """FIFO with backfilling (see the module's docstring). `table` is not changed."""
    work = table.copy()
    plan = QueuePlan()
    # What each node has free at this instant bounds what any window starting now can get: nodes whose free-now
    # cannot take the request are never looked at through time, and a request that fits in no node's free-now
    # (nor their component-wise best) is skipped at once. Free-for-ever is cached per node until it changes.
    free_now = {node: work.free(node, now, now + 1e-9, preempt=False, now=now) for node in work.capacity}
    free_now = {node: free for node, free in free_now.items() if free.cores > 0 and free.memory_mb > 0}
    forever: dict[str, Res] = {}
    best = _best(free_now.values())  # an upper bound: recomputed only when it let a request through in vain
    for request in queue:
        end = now + request.duration if request.duration is not None else INF
        picks = None
        if request.need.fits_in(best):
            picks = _first_fit(work, request, now, end, free_now, forever)
            if picks is None:
                best = _best(free_now.values())
        if picks is not None:
            for node in set(picks):
                work.allocate(
                    request.lease_id, [n for n in picks if n == node], request.need, now, end, "besteffort", now
                )
                free = work.free(node, now, now + 1e-9, preempt=False, now=now)
                if free.cores > 0 and free.memory_mb > 0:
                    free_now[node] = free
                else:
                    free_now.pop(node, None)  # full now: never looked at again in this plan
                forever.pop(node, None)
            plan.start.append((request, picks))
            continue
        plan.waiting.append(request.lease_id)
        if len(plan.waiting) == 1:  # only the head gets a reservation (none if no known end makes room)
            shadow = _earliest(work, request, now)
            if shadow is not None:
                when, picks = shadow
                finish = when + request.duration if request.duration is not None else INF
                work.allocate(request.lease_id, picks, request.need, when, finish, "shadow")
                plan.shadow = (request.lease_id, when)
    return plan


def _first_fit(
    work: SlotTable, request: Request, now: float, end: float, free_now: dict[str, Res], forever: dict[str, Res]
) -> list[str] | None:
    """`work.map_vms` for a best-effort request starting now, skipping nodes that cannot take one VM now."""
    picks: list[str] = []
    for node, free in free_now.items():
        if not request.need.fits_in(free):
            continue
        if end == INF:
            window = forever.get(node)
            if window is None:
                window = forever[node] = work.free(node, now, INF, preempt=False, now=now)
        else:
            window = work.free(node, now, end, preempt=False, now=now)
        picks += [node] * min(how_many(window, request.need), request.count - len(picks))
        if len(picks) == request.count:
            return picks
    return None


def _best(frees: Iterable[Res]) -> Res:
    cores = memory = disk = 0
    for free in frees:
        cores, memory, disk = max(cores, free.cores), max(memory, free.memory_mb), max(disk, free.disk_gb)
    return Res(cores, memory, disk)


MAX_SHADOW_TRIES = 256  # moments looked at for the head's reservation


def _earliest(table: SlotTable, request: Request, now: float) -> tuple[float, list[str]] | None:
    # Nodes whose open-ended allocations (instances without a known end) leave no room never free up.
    usable = []
    for node, capacity in table.capacity.items():
        held = ZERO
        for a in table.allocations.get(node, ()):
            if a.end == INF and a.kind != "reserved":
                held = held + a.res
        free = Res(capacity.cores - held.cores, capacity.memory_mb - held.memory_mb, capacity.disk_gb - held.disk_gb)
        if request.need.fits_in(free):
            usable.append(node)
    if not usable:
        return None
    for when in table.times_after(now)[:MAX_SHADOW_TRIES]:
        end = when + request.duration if request.duration is not None else INF
        picks = table.map_vms(request.need, request.count, when, end, preempt=False, now=when, nodes=usable)
        if picks is not None:
            return when, picks
    return None


# --- preemption -------------------------------------------------------------------------------------------
def preemptions(table: SlotTable, at: float) -> list[str]:
    """Best-effort leases to preempt so that, at time `at`, every node holds what is allocated there: the most
    recently started first, until each overloaded node fits. A lease preempted on one node frees all its nodes."""
    chosen: list[str] = []
    gone: set[str] = set()
    for node, capacity in table.capacity.items():
        active = [a for a in table.allocations.get(node, ()) if a.start <= at < a.end and a.kind != "shadow"]
        total = ZERO
        for a in active:
            if a.lease_id not in gone:
                total = total + a.res
        if total.fits_in(capacity):
            continue
        candidates = sorted(
            (a for a in active if a.kind == "besteffort" and a.lease_id not in gone),
            key=lambda a: (-a.started_at, a.lease_id),
        )
        for a in candidates:
            if total.fits_in(capacity):
                break
            total = Res(total.cores - a.res.cores, total.memory_mb - a.res.memory_mb, total.disk_gb - a.res.disk_gb)
            gone.add(a.lease_id)
            chosen.append(a.lease_id)
    return chosen
