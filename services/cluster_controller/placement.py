"""Placement policies: small pure functions over a snapshot of node capacity.

A policy gets the nodes (in NODES order), what one instance needs, how many instances to place and the
round-robin cursor, and returns a `Plan`: the node index of each placed instance (at most `count`), the
sleeping nodes it chose (they must be woken) and the next cursor. It never mutates its input. Placing a
batch is the same as placing the instances one by one against a snapshot that shrinks as they land,
which is what each policy simulates, in O(nodes + count log nodes) at worst.

Policies (SCHEDPOLICY):
- GREEDY: the first UP/WAKING node in NODES order that fits; else the first ASLEEP one that fits (woken).
- ROUNDROBIN: from the cursor, circularly, skipping only DOWN nodes; the first that fits wins and the cursor
  moves past it (Eucalyptus's schedState).
- POWERSAVE: GREEDY placement; the power side (idle nodes powered down, Wake-on-LAN) is in power.py.
- PACKING / STRIPING / LOAD: OpenNebula's ranks: most instances first, fewest instances first, most free
  cores first; ties go to the earlier node. Awake nodes first; sleeping ones only when no awake node fits.

Adding a policy is one function and one line in POLICIES.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum


class NodeState(StrEnum):
    UP = "UP"
    DOWN = "DOWN"
    ASLEEP = "ASLEEP"
    WAKING = "WAKING"


AWAKE = frozenset({NodeState.UP, NodeState.WAKING})


@dataclass(frozen=True, slots=True)
class NodeCapacity:
    """What placement knows of one node: its state and free resources (MiB, GB, cores)."""

    key: str
    state: NodeState
    memory_mb: int
    disk_gb: int
    cores: int
    instances: int = 0


@dataclass(frozen=True, slots=True)
class Need:
    """What one instance of a VM type takes."""

    cores: int
    memory_mb: int
    disk_gb: int


@dataclass(frozen=True)
class Plan:
    picks: list[int]  # node index per placed instance, in launch order
    cursor: int = 0  # ROUNDROBIN's next start
    wake: list[int] = field(default_factory=list)  # ASLEEP nodes used by this plan, to be woken


Policy = Callable[[Sequence[NodeCapacity], Need, int, int], Plan]


def fits(node: NodeCapacity, need: Need) -> bool:
    return node.memory_mb >= need.memory_mb and node.disk_gb >= need.disk_gb and node.cores >= need.cores


def slots(node: NodeCapacity, need: Need) -> int:
    """How many instances of `need` the node can still take (the reference's floor(min(...)))."""
    if not fits(node, need):
        return 0
    return min(node.memory_mb // need.memory_mb, node.disk_gb // need.disk_gb, node.cores // need.cores)


def _wakes(nodes: Sequence[NodeCapacity], picks: list[int]) -> list[int]:
    return sorted({i for i in picks if nodes[i].state is NodeState.ASLEEP})


def greedy(nodes: Sequence[NodeCapacity], need: Need, count: int, cursor: int = 0) -> Plan:
    picks: list[int] = []
    for wanted in (AWAKE, frozenset({NodeState.ASLEEP})):
        for index, node in enumerate(nodes):
            if len(picks) >= count:
                break
            if node.state in wanted and fits(node, need):
                picks.extend([index] * min(slots(node, need), count - len(picks)))
    return Plan(picks, cursor, _wakes(nodes, picks))


def roundrobin(nodes: Sequence[NodeCapacity], need: Need, count: int, cursor: int = 0) -> Plan:
    """One circle from the cursor gives each fitting node one instance; later circles go round the nodes
    that still have room. Scanning stops as soon as `count` are placed, so one decision is cheap."""
    total = len(nodes)
    if total == 0 or count <= 0:
        return Plan([], cursor)
    picks: list[int] = []
    ring: deque[tuple[int, int]] = deque()  # (index, slots left) of nodes seen, in visiting order
    start = cursor % total
    for step in range(total):
        index = (start + step) % total
        node = nodes[index]
        if node.state is NodeState.DOWN or not fits(node, need):
            continue
        picks.append(index)
        left = slots(node, need) - 1
        if left:
            ring.append((index, left))
        if len(picks) == count:
            break
    while ring and len(picks) < count:
        index, left = ring.popleft()
        picks.append(index)
        if left > 1:
            ring.append((index, left - 1))
    if not picks:
        return Plan([], cursor)
    return Plan(picks, (picks[-1] + 1) % total, _wakes(nodes, picks))


def _ranked(attribute: str, descending: bool) -> Policy:
    """A rank policy: the node with the highest (or lowest) `attribute` takes the next instance; ties go to
    the earlier node."""
    sign = -1 if descending else 1

    def best_one(nodes: Sequence[NodeCapacity], need: Need, wanted: frozenset[NodeState]) -> int:
        # The common single decision: one tight pass, no heap (this is the hot path over many nodes).
        m, d, c = need.memory_mb, need.disk_gb, need.cores
        best, best_value = -1, 0
        for index, node in enumerate(nodes):
            if node.cores >= c and node.memory_mb >= m and node.disk_gb >= d and node.state in wanted:
                value = sign * getattr(node, attribute)
                if best < 0 or value < best_value:
                    best, best_value = index, value
        return best

    def policy(nodes: Sequence[NodeCapacity], need: Need, count: int, cursor: int = 0) -> Plan:
        picks: list[int] = []
        for wanted in (AWAKE, frozenset({NodeState.ASLEEP})):
            if len(picks) >= count:
                break
            if count - len(picks) == 1:
                index = best_one(nodes, need, wanted)
                if index >= 0:
                    picks.append(index)
                continue
            heap = [
                (sign * getattr(n, attribute), i, n) for i, n in enumerate(nodes) if n.state in wanted and fits(n, need)
            ]
            heapq.heapify(heap)
            while heap and len(picks) < count:
                _, index, node = heapq.heappop(heap)
                picks.append(index)
                node = _take(node, need)
                if fits(node, need):
                    heapq.heappush(heap, (sign * getattr(node, attribute), index, node))
        return Plan(picks, cursor, _wakes(nodes, picks))

    return policy


def _take(node: NodeCapacity, need: Need) -> NodeCapacity:
    return NodeCapacity(
        node.key,
        node.state,
        node.memory_mb - need.memory_mb,
        node.disk_gb - need.disk_gb,
        node.cores - need.cores,
        node.instances + 1,
    )


packing = _ranked("instances", descending=True)
striping = _ranked("instances", descending=False)
load = _ranked("cores", descending=True)

POLICIES: dict[str, Policy] = {
    "GREEDY": greedy,
    "ROUNDROBIN": roundrobin,
    "POWERSAVE": greedy,
    "PACKING": packing,
    "STRIPING": striping,
    "LOAD": load,
}


def policy(name: str) -> Policy:
    try:
        return POLICIES[name.upper()]
    except KeyError:
        raise ValueError(f"unknown SCHEDPOLICY {name!r}; one of {', '.join(POLICIES)}") from None
