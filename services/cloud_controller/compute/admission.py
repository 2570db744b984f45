"""Admission control: the CLC's view of each zone's free capacity, and reservations against it (DESIGN 5).

free(zone, type) = what the zone's CC last reported as available for that type, minus what reservations not yet
reflected in that report hold. A reservation (token) is `pending` while the CLC prepares the launch and
`submitted` once the CC accepted it; it is redeemed (dropped) by the first capacity report whose request was sent
after the CC's acceptance, since that report already counts the instances. A token the CC never confirms expires.

Checks and reservations are synchronous (no await between reading free capacity and taking it), so concurrent
requests on the event loop can never over-commit a zone.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from common.messages.cc_nc import VmType
from common.messages.clc_cc import DescribeResourcesResponse
from services.cloud_controller.compute.errors import ComputeError

log = logging.getLogger("koala.clc.admission")
_token_ids = itertools.count(1)


@dataclass
class ZoneCapacity:
    zone: str
    available: dict[str, int] = field(default_factory=dict)
    max: dict[str, int] = field(default_factory=dict)
    nodes_up: int = 0
    nodes_total: int = 0
    sent_at: float = 0.0  # monotonic time the DescribeResources request that produced this report was sent
    reachable: bool = False
    remote: bool = False  # its instances run in a remote cloud (bursting)


@dataclass
class Token:
    id: int
    zone: str
    owner_id: str
    vm: VmType
    count: int
    created: float
    state: str = "pending"  # pending -> submitted -> redeemed | released | expired
    submitted_at: float = 0.0
    nodes: list[str] = field(default_factory=list)  # the lease scheduler's node per instance (placement hints)
    lease_id: str = ""  # the capacity reservation or spot request the instances run in

    @property
    def cores(self) -> int:
        return self.vm.cores * self.count

    @property
    def memory_mb(self) -> int:
        return self.vm.memory_mb * self.count

    @property
    def disk_gb(self) -> int:
        return self.vm.disk_gb * self.count


class Admission:
    def __init__(self, timeout: float = 120.0, clock: Callable[[], float] = time.monotonic):
        self.zones: dict[str, ZoneCapacity] = {}
        self.tokens: dict[int, Token] = {}
        self.timeout = timeout
        self.clock = clock

    # --- what the CCs report ----------------------------------------------------------------------------
    def update(self, report: DescribeResourcesResponse, sent_at: float, zone: str | None = None) -> None:
        """Record a CC's DescribeResources answer to a request sent at `sent_at` (monotonic)."""
        name = zone or report.zone
        capacity = self.zones.setdefault(name, ZoneCapacity(name))
        if sent_at < capacity.sent_at:
            return  # an older answer arriving late
        capacity.available = {r.vm_type: max(r.available, 0) for r in report.resources}
        capacity.max = {r.vm_type: max(r.max, 0) for r in report.resources}
        capacity.nodes_up, capacity.nodes_total = report.nodes_up, report.nodes_total
        capacity.sent_at, capacity.reachable = sent_at, True
        capacity.remote = report.remote
        for token in list(self.tokens.values()):
            if token.zone == name and token.state == "submitted" and token.submitted_at <= sent_at:
                self._drop(token, "redeemed")

    def unreachable(self, zone: str) -> None:
        self.zones.setdefault(zone, ZoneCapacity(zone)).reachable = False

    def known_zone(self, zone: str) -> None:
        self.zones.setdefault(zone, ZoneCapacity(zone))

    def stale(self, age: float) -> bool:
        """True if some zone's last report is older than `age` seconds (or it has none)."""
        now = self.clock()
        return any(now - z.sent_at > age for z in self.zones.values())

    # --- free capacity ----------------------------------------------------------------------------------
    def held(self, zone: str, vm: VmType) -> int:
        """How many instances of `vm` the zone's live tokens may take away from its reported availability."""
        cores = memory = disk = 0
        for token in self.tokens.values():
            if token.zone == zone:
                cores, memory, disk = cores + token.cores, memory + token.memory_mb, disk + token.disk_gb
        if not cores:
            return 0
        # Resources held, counted in units of `vm`, rounded up: exact for tokens of the same type and never
        # less than the true effect for other types (the types are component-wise ordered).
        return math.ceil(max(cores / vm.cores, memory / vm.memory_mb, disk / vm.disk_gb) - 1e-9)

    def free(self, zone: str, vm: VmType) -> int:
        capacity = self.zones.get(zone)
        if capacity is None or not capacity.reachable:
            return 0
        return max(capacity.available.get(vm.name, 0) - self.held(zone, vm), 0)

    def maximum(self, zone: str, vm: VmType) -> int:
        capacity = self.zones.get(zone)
        return capacity.max.get(vm.name, 0) if capacity else 0

    # --- reservations -----------------------------------------------------------------------------------
    def reserve(
        self,
        owner_id: str,
        vm: VmType,
        min_count: int,
        max_count: int,
        zone: str | None = None,
        among: list[str] | None = None,
    ) -> Token:
        """Reserve between min_count and max_count instances of `vm` in `zone` (or the zone with most free, of
        `among` if given)."""
        self.expire()
        if zone is not None:
            if zone not in self.zones:
                raise ComputeError("InvalidZone.NotFound", f"The zone '{zone}' does not exist")
            chosen = zone
        else:
            candidates = sorted(self.zones if among is None else [z for z in among if z in self.zones])
            if not candidates:
                raise ComputeError("InsufficientInstanceCapacity", "There are no availability zones", 503)
            chosen = max(candidates, key=lambda z: self.free(z, vm))
        free = self.free(chosen, vm)
        if free < min_count:
            raise ComputeError(
                "InsufficientInstanceCapacity",
                f"Not enough resources available: {vm.name} in {chosen} ({free} free, {min_count} requested)",
                503,
            )
        token = Token(next(_token_ids), chosen, owner_id, vm, min(free, max_count), self.clock())
        self.tokens[token.id] = token
        log.debug("reserved %d x %s in %s (token %d)", token.count, vm.name, chosen, token.id)
        return token

    def shrink(self, token: Token, count: int) -> None:
        """Fewer instances were started than reserved: give back the rest."""
        if token.id in self.tokens:
            token.count = max(min(count, token.count), 0)
            if token.count == 0:
                self._drop(token, "released")

    def submitted(self, token: Token) -> None:
        if token.id in self.tokens:
            token.state, token.submitted_at = "submitted", self.clock()

    def release(self, token: Token) -> None:
        if token.id in self.tokens:
            self._drop(token, "released")

    def expire(self) -> list[Token]:
        """Drop tokens the CC never confirmed (nor reflected) within the timeout."""
        limit = self.clock() - self.timeout
        gone = [t for t in self.tokens.values() if (t.submitted_at or t.created) < limit]
        for token in gone:
            log.warning(
                "reservation token %d (%d x %s in %s) expired", token.id, token.count, token.vm.name, token.zone
            )
            self._drop(token, "expired")
        return gone

    def _drop(self, token: Token, state: str) -> None:
        token.state = state
        self.tokens.pop(token.id, None)


def count_quota(used: int, adding: int, limit: int, what: str) -> None:
    """Raise when `adding` more would take `used` past `limit` (0 means unlimited)."""
    if limit and used + adding > limit:
        raise ComputeError(
            "InstanceLimitExceeded" if what != "addresses" else "AddressLimitExceeded",
            f"Your quota allows {limit} {what}; {used} in use, {adding} more requested",
        )
