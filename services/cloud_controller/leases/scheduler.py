"""The lease scheduler in the CLC (DESIGN 12): one slot table per zone, built from the zone's nodes (the CC's
DescribeNodes), the accepted capacity reservations, the live instances and the launches in flight, and used by
admission control.

- A capacity reservation (advance reservation) is accepted only if its VMs map onto the zone's nodes for its
  whole window alongside every accepted reservation and every on-demand instance (best-effort ones would be
  preempted); its node mapping is stored with it and given to the CC as placement hints at launch.
- An on-demand launch runs for ever as far as anyone knows, so in a zone with reservations it must fit on
  [now, inf) beside all of them: capacity promised to a coming reservation is refused (InsufficientInstanceCapacity).
- A launch that targets a reservation (or an untargeted one matching an open reservation) takes one of its slots.
- A tick starts reservations at their StartDate, expires them at their EndDate (their instances keep running, as
  on-demand ones, as EC2 does) and runs the spot side (`spot.SpotQueue`).

Every change is written to leases.db (store.LeaseStore) before it is acted on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from common import ids
from common.messages.cc_nc import VmType
from common.rpc import PeerUnreachable, RpcError
from services.cloud_controller.compute.errors import ComputeError, invalid
from services.cloud_controller.leases.slottable import INF, ZERO, Allocation, Kind, Res, SlotTable, how_many
from services.cloud_controller.leases.spot import SpotQueue
from services.cloud_controller.leases.store import CapacityReservation, LeaseStore

if TYPE_CHECKING:
    from services.cloud_controller.compute.admission import Token
    from services.cloud_controller.compute.engine import Compute
    from services.cloud_controller.compute.launch import RunRequest

log = logging.getLogger("koala.clc.leases")
MAX_RESERVATION_COUNT = 1000  # instances per capacity reservation
MAX_RESERVATIONS = 5000  # live capacity reservations per account
MAX_AHEAD = 5 * 365 * 86400.0  # how far ahead a reservation may start
FOREVER_CACHE_SECONDS = 60.0
COUNTED_NODE_STATES = ("UP", "ASLEEP", "WAKING")  # as the CC's DescribeResources counts them


def res_of(vm: VmType) -> Res:
    return Res(vm.cores, vm.memory_mb, vm.disk_gb)


@dataclass
class Claim:
    """A launch in flight: what it holds in the slot table until its instances are reported on their nodes."""

    zone: str
    lease_id: str  # capacity reservation or spot request id; "" for on-demand
    nodes: list[str]
    need: Res
    kind: str  # running | besteffort | reserved (inside a reservation: no extra room)
    request_ids: list[str] = field(default_factory=list)  # spot: the request of each instance, in order


class LeaseScheduler:
    def __init__(
        self,
        compute: Compute,
        store: LeaseStore,
        tick: float = 1.0,
        clock: Callable[[], float] = time.time,
        spot_notice: float = 120.0,
    ):
        self.compute, self.store, self.tick_seconds, self.clock = compute, store, tick, clock
        self.nodes: dict[str, dict[str, Res]] = {}  # zone -> node id -> capacity
        self.nodes_at: dict[str, float] = {}
        self.claims: dict[int, Claim] = {}  # admission token id -> claim
        self.changes = 0  # bumped at every change of a reservation (the cached tables' key)
        self._tables: dict[str, tuple[tuple[Any, ...], SlotTable, set[str]]] = {}
        self._forever: dict[str, tuple[tuple[Any, ...], float, dict[str, Res]]] = {}
        self._task: asyncio.Task[Any] | None = None
        self._wake = asyncio.Event()
        self.spot = SpotQueue(self, notice=spot_notice)  # best-effort leases (spot requests)

    # --- nodes ------------------------------------------------------------------------------------------
    async def refresh_nodes(self, zone: str) -> None:
        try:
            answer = await self.compute.cc.describe_nodes(zone)
        except (RpcError, PeerUnreachable, ComputeError) as err:
            log.debug("DescribeNodes %s failed: %s", zone, err)
            return
        self.set_nodes(zone, {n.node_id or n.url: n for n in answer.nodes})

    def set_nodes(self, zone: str, nodes: dict[str, Any]) -> None:
        self.nodes[zone] = {
            key: Res(n.cores_max, n.memory_max_mb, n.disk_max_gb)
            for key, n in nodes.items()
            if n.state in COUNTED_NODE_STATES
        }
        self.nodes_at[zone] = self.clock()

    async def _nodes_known(self, zone: str) -> None:
        age = self.clock() - self.nodes_at.get(zone, 0)
        if not self.nodes.get(zone) or age > self.compute.settings.poll_interval:
            await self.refresh_nodes(zone)

    async def before_admit(self, owner_id: str, request: RunRequest, vm: VmType, zone: str | None) -> None:
        """Before admission: a targeted reservation's own errors first (as EC2 answers them), and the nodes of
        zones with leases known."""
        if request.capacity_reservation_id:
            cr = self._target(owner_id, request.capacity_reservation_id, vm, zone or "")
            if self.available(cr) < request.min_count:
                raise self._exceeded(cr)
        for name in [zone] if zone else list(self.compute.cc.clusters):
            if self.has_leases(name):
                await self._nodes_known(name)
        on_demand = not request.spot and not request.capacity_reservation_id
        if on_demand and request.capacity_preference != "none":
            # A launch an open reservation takes has its room there: no need to preempt anything.
            on_demand = not any(
                cr.state == "active"
                and cr.match == "open"
                and cr.owner_id == owner_id
                and cr.instance_type == vm.name
                and (not zone or cr.zone == zone)
                and self.available(cr) >= request.min_count
                for cr in self.live_reservations()
            )
        if self.spot is not None and on_demand:
            await self.spot.make_room([zone] if zone else list(self.compute.cc.clusters), res_of(vm), request.min_count)

    def _target(self, owner_id: str, target: str, vm: VmType, zone: str) -> CapacityReservation:
        cr = self.reservation(owner_id, target)
        if cr.state != "active":
            raise ComputeError(
                "InvalidCapacityReservationId.NotFound" if not cr.live else "IncorrectState",
                f"The capacity reservation '{target}' is {cr.state}",
            )
        if cr.instance_type != vm.name or cr.zone != zone:
            raise ComputeError(
                "InvalidParameterCombination",
                f"The capacity reservation '{target}' is for {cr.instance_type} in {cr.zone}",
            )
        return cr

    def _exceeded(self, cr: CapacityReservation) -> ComputeError:
        return ComputeError(
            "ReservationCapacityExceeded",
            f"The capacity reservation '{cr.reservation_id}' has {self.available(cr)} instances available",
        )

    # --- the slot table ---------------------------------------------------------------------------------
    def need_of(self, instance_type: str) -> Res | None:
        vm = self.compute.vmtypes.get(instance_type)
        return res_of(vm) if vm is not None else None

    def live_reservations(self, zone: str | None = None) -> list[CapacityReservation]:
        return [cr for cr in self.store.reservations.values() if cr.live and (zone is None or cr.zone == zone)]

    def _reserved(self, zone: str) -> tuple[SlotTable, set[str]]:
        """The zone's nodes and reservations, rebuilt only when either changed (a launch decision copies it)."""
        key = (
            self.changes,
            self.nodes_at.get(zone, 0.0),
            tuple((v.name, v.cores, v.memory_mb, v.disk_gb) for v in self.compute.vmtypes.list()),
        )
        cached = self._tables.get(zone)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        table = SlotTable(dict(self.nodes.get(zone, {})))
        live_crs = set()
        for cr in self.live_reservations(zone):
            need = self.need_of(cr.instance_type)
            if need is not None:
                table.allocate(cr.reservation_id, cr.nodes, need, cr.start_date, cr.end, "reserved")
                live_crs.add(cr.reservation_id)
        self._tables[zone] = (key, table, live_crs)
        return table, live_crs

    def _add_to_cache(self, cr: CapacityReservation) -> None:
        """A new reservation goes into the cached table as is (no rebuild: creating many stays linear)."""
        cached = self._tables.get(cr.zone)
        need = self.need_of(cr.instance_type)
        if cached is None or need is None or cached[0][0] != self.changes:
            self.changes += 1
            return
        cached[1].allocate(cr.reservation_id, cr.nodes, need, cr.start_date, cr.end, "reserved")
        cached[2].add(cr.reservation_id)
        self.changes += 1  # a new key for the same (updated) table: what was derived from it is recomputed
        self._tables[cr.zone] = ((self.changes, *cached[0][1:]), cached[1], cached[2])

    def table(self, zone: str, now: float | None = None) -> SlotTable:
        now = self.clock() if now is None else now
        reserved, live_crs = self._reserved(zone)
        table = reserved.copy()
        for instance in self.compute.store.instances.values():
            if instance.zone != zone or not instance.live or not instance.node_id:
                continue
            lease = self.store.lease_of.get(instance.instance_id, "")
            if lease in live_crs:
                continue  # inside its reservation's allocation
            kind: Kind = "besteffort" if lease.startswith("sir-") else "running"
            need = Res(instance.cores, instance.memory_mb, instance.disk_gb)
            start = min(instance.launch_time, now)
            # Preemption takes the most recently started first; instances of one launch count in launch order.
            started = start + instance.launch_index * 1e-6
            table.add([Allocation(lease or instance.instance_id, instance.node_id, start, INF, need, kind, started)])
        for token_id, claim in self.claims.items():
            if claim.zone == zone and claim.kind != "reserved":
                table.allocate(f"claim-{token_id}", claim.nodes, claim.need, now, INF, claim.kind, now)  # type: ignore[arg-type]
        return table

    def has_leases(self, zone: str) -> bool:
        """Whether the slot table must be asked (else admission is what it was: now and sums)."""
        return any(cr.zone == zone for cr in self.live_reservations()) or (
            self.spot is not None and self.spot.active_in(zone)
        )

    # --- capacity reservations --------------------------------------------------------------------------
    async def create(
        self,
        owner_id: str,
        instance_type: str,
        zone: str,
        count: int,
        start: float | None,
        end: float | None,
        end_type: str,
        match: str,
        platform: str,
        tenancy: str = "default",
        client_token: str = "",
        tags: list[dict[str, Any]] | None = None,
    ) -> CapacityReservation:
        if client_token:
            if len(client_token) > 64:
                raise invalid("ClientToken", "at most 64 characters")
            for cr in self.store.reservations.values():
                if cr.owner_id == owner_id and cr.client_token == client_token:
                    return cr
        vm = self.compute.vm_type(instance_type)
        if zone not in self.compute.cc.clusters:
            raise ComputeError("InvalidParameterValue", f"Invalid availability zone: [{zone[:64]}]")
        now = self.clock()
        start, end = self._window(start, end, end_type, now)
        self._check_shape(count, match, tenancy)
        if sum(1 for cr in self.store.reservations.values() if cr.owner_id == owner_id and cr.live) >= MAX_RESERVATIONS:
            raise ComputeError("ReservationCapacityExceeded", f"at most {MAX_RESERVATIONS} capacity reservations")
        await self._nodes_known(zone)
        # Synchronous from the fit check to the record in memory: concurrent requests see each other. A refusal
        # on node capacities older than a second asks the CC again first (nodes may have come up since).
        try:
            picks = self._fit(zone, res_of(vm), count, start, end, now)
        except ComputeError:
            if self.clock() - self.nodes_at.get(zone, 0) <= self.compute.settings.fresh_report:
                raise
            await self.refresh_nodes(zone)
            picks = self._fit(zone, res_of(vm), count, start, end, now)
        cr = CapacityReservation(
            reservation_id=self._new_id(),
            owner_id=owner_id,
            zone=zone,
            instance_type=vm.name,
            platform=platform,
            total=count,
            match=match,
            start_date=start,
            end_date=None if end == INF else end,
            end_date_type=end_type,
            state="active" if start <= now else "scheduled",
            create_date=now,
            tenancy=tenancy,
            client_token=client_token,
            nodes=picks,
            tags=tags or [],
        )
        self.store.reservations[cr.reservation_id] = cr
        self._add_to_cache(cr)
        try:
            await self.store.save_reservations(cr)
        except BaseException:
            self.store.reservations.pop(cr.reservation_id, None)
            self.changes += 1
            raise
        log.info(
            "capacity reservation %s: %d x %s in %s over [%s, %s) on %s",
            cr.reservation_id,
            count,
            vm.name,
            zone,
            _iso(start),
            _iso(end),
            dict(Counter(picks)),
        )
        self.wake()
        return cr

    def _fit(
        self, zone: str, need: Res, count: int, start: float, end: float, now: float, leave: str = ""
    ) -> list[str]:
        table = self.table(zone, now)
        if leave:
            table.remove(leave)
        picks = table.map_vms(need, count, max(start, now), end, preempt=True)
        if picks is None:
            raise ComputeError(
                "InsufficientInstanceCapacity",
                f"There is not enough capacity in {zone} for {count} instances from {_iso(start)} to {_iso(end)}"
                " beside the reservations and instances already accepted",
                503,
            )
        return picks

    @staticmethod
    def _window(start: float | None, end: float | None, end_type: str, now: float) -> tuple[float, float]:
        if end_type not in ("unlimited", "limited"):
            raise invalid("EndDateType", "must be unlimited or limited")
        start = now if start is None or start < now else start
        if start > now + MAX_AHEAD:
            raise invalid("StartDate", "at most five years ahead")
        if end_type == "unlimited":
            if end is not None:
                raise invalid("EndDate", "EndDate must be omitted when EndDateType is unlimited")
            return start, INF
        if end is None:
            raise invalid("EndDate", "EndDate is required when EndDateType is limited")
        if end <= start or end <= now:
            raise invalid("EndDate", "EndDate must be after StartDate and in the future")
        return start, end

    @staticmethod
    def _check_shape(count: int, match: str, tenancy: str) -> None:
        if not 1 <= count <= MAX_RESERVATION_COUNT:
            raise invalid("InstanceCount", f"must be between 1 and {MAX_RESERVATION_COUNT}")
        if match not in ("open", "targeted"):
            raise invalid("InstanceMatchCriteria", "must be open or targeted")
        if tenancy != "default":
            raise invalid("Tenancy", "only default tenancy is offered")

    def _new_id(self) -> str:
        while True:
            candidate = ids.new_id("cr")
            if candidate not in self.store.reservations:
                return candidate

    def reservation(self, owner_id: str, reservation_id: str) -> CapacityReservation:
        if not ids.is_id(reservation_id, "cr"):
            raise ComputeError("InvalidCapacityReservationId.Malformed", f'Invalid id: "{reservation_id[:40]}"')
        cr = self.store.reservations.get(ids.normalize(reservation_id))
        if cr is None or cr.owner_id != owner_id:
            raise ComputeError(
                "InvalidCapacityReservationId.NotFound", f"The capacity reservation '{reservation_id}' does not exist"
            )
        return cr

    async def cancel(self, owner_id: str, reservation_id: str) -> None:
        cr = self.reservation(owner_id, reservation_id)
        if not cr.live:
            raise ComputeError(
                "IncorrectState", f"The capacity reservation '{reservation_id}' is {cr.state} and cannot be cancelled"
            )
        await self._set_state(cr, "cancelled")

    async def modify(
        self,
        owner_id: str,
        reservation_id: str,
        count: int | None,
        start: float | None,
        end: float | None,
        end_type: str | None,
        match: str | None,
    ) -> None:
        cr = self.reservation(owner_id, reservation_id)
        if not cr.live:
            raise ComputeError("IncorrectState", f"The capacity reservation '{reservation_id}' is {cr.state}")
        now = self.clock()
        if start is not None and cr.state == "active":
            raise invalid("StartDate", "the capacity reservation has started")
        new_type = end_type or ("limited" if end is not None else cr.end_date_type)
        new_end = end if end is not None else (cr.end_date if new_type == "limited" else None)
        new_start, new_end_f = self._window(start if start is not None else cr.start_date, new_end, new_type, now)
        new_count = count if count is not None else cr.total
        new_match = match or cr.match
        self._check_shape(new_count, new_match, cr.tenancy)
        used = self.used(cr)
        if new_count < used:
            raise invalid("InstanceCount", f"{used} instances run in the reservation")
        need = self.need_of(cr.instance_type)
        if need is None:
            raise ComputeError("IncorrectState", f"instance type {cr.instance_type} no longer exists")
        await self._nodes_known(cr.zone)
        picks = self._fit(cr.zone, need, new_count, new_start, new_end_f, now, leave=cr.reservation_id)
        cr.total, cr.start_date, cr.end_date_type, cr.match = new_count, new_start, new_type, new_match
        cr.end_date = None if new_end_f == INF else new_end_f
        cr.nodes = self._keep_running(cr, picks)
        self.changes += 1
        await self.store.save_reservations(cr)
        self.wake()

    def _keep_running(self, cr: CapacityReservation, picks: list[str]) -> list[str]:
        """A new mapping that keeps the nodes where the reservation's instances already run when it can."""
        running = Counter(self._running_nodes(cr))
        if all(Counter(picks)[n] >= k for n, k in running.items()):
            return picks
        return cr.nodes if len(cr.nodes) == len(picks) else picks

    def _running_nodes(self, cr: CapacityReservation) -> list[str]:
        instances = self.compute.store.instances
        return [
            instances[i].node_id
            for i in self.store.instances_of(cr.reservation_id)
            if i in instances and instances[i].live and instances[i].node_id
        ]

    def used(self, cr: CapacityReservation) -> int:
        """Instances running in the reservation, and launches into it in flight."""
        instances = self.compute.store.instances
        live = sum(1 for i in self.store.instances_of(cr.reservation_id) if i in instances and instances[i].live)
        return live + sum(len(c.nodes) for c in self.claims.values() if c.lease_id == cr.reservation_id)

    def available(self, cr: CapacityReservation) -> int:
        return max(cr.total - self.used(cr), 0) if cr.state == "active" else (cr.total if cr.live else 0)

    async def _set_state(self, cr: CapacityReservation, state: str) -> None:
        previous = cr.state
        cr.state = state
        self.changes += 1
        try:
            await self.store.save_reservations(cr)
        except BaseException:
            cr.state = previous
            self.changes += 1
            raise
        log.info("capacity reservation %s: %s -> %s", cr.reservation_id, previous, state)
        self.wake()

    # --- admission (called by the compute engine, synchronously, with its token) ---------------------------
    def claim(self, owner_id: str, request: RunRequest, vm: VmType, token: Token) -> None:
        """Decide where a RunInstances request goes in the slot table; sets token.nodes / token.lease_id and may
        lower token.count (never below request.min_count), or raises the EC2 error."""
        need = res_of(vm)
        target = request.capacity_reservation_id
        if target:
            cr = self._target(owner_id, target, vm, token.zone)
            if not self._claim_reservation(cr, request.min_count, token, need):
                raise self._exceeded(cr)
            return
        if request.capacity_preference != "none" and not request.spot:
            for cr in sorted(self.live_reservations(token.zone), key=lambda c: c.create_date):
                if (
                    cr.state == "active"
                    and cr.match == "open"
                    and cr.owner_id == owner_id
                    and cr.instance_type == vm.name
                    and self._claim_reservation(cr, token.count, token, need)
                ):
                    return
        spot = request.spot or {}
        request_ids = list(spot.get("request_ids", []))
        if spot.get("nodes") and len(spot["nodes"]) == token.count:  # the queue's own plan (plan_queue)
            token.nodes = list(spot["nodes"])
            self.claims[token.id] = Claim(token.zone, "", token.nodes, need, "besteffort", request_ids)
            return
        if not self.has_leases(token.zone) and not spot:
            return
        now = self.clock()
        # A spot launch runs only where it fits now beside everything (it starts nothing's preemption);
        # an on-demand one must fit for ever beside the reservations (best-effort leases would make room).
        if spot:
            table = self.table(token.zone, now)
            picks = table.map_most(need, request.min_count, token.count, now, INF, preempt=False, now=now)
        else:
            picks = self._most(token.zone, need, request.min_count, token.count, now)
        if picks is None:
            raise ComputeError(
                "InsufficientInstanceCapacity",
                f"Not enough capacity in {token.zone} for {request.min_count} x {vm.name}: it is promised to"
                " capacity reservations",
                503,
            )
        if len(picks) < token.count:
            self.compute.admission.shrink(token, len(picks))
        token.nodes = picks
        self.claims[token.id] = Claim(token.zone, "", picks, need, "besteffort" if spot else "running", request_ids)

    def _most(self, zone: str, need: Res, low: int, high: int, now: float) -> list[str] | None:
        """Up to `high` (at least `low`) VMs placed for ever beside the reservations and the instances that are
        not best-effort, first fit in node order. Equal to mapping over [now, inf) in `table(zone)` with
        preempt=True, without building it: the reservations' part is cached, instances hold [now, inf)."""
        frees = self._forever_free(zone, now)
        _, live_crs = self._reserved(zone)
        used: dict[str, Res] = {}
        for instance in self.compute.store.instances.values():
            if instance.zone != zone or not instance.live or not instance.node_id:
                continue
            lease = self.store.lease_of.get(instance.instance_id, "")
            if lease in live_crs or lease.startswith("sir-"):
                continue
            held = used.get(instance.node_id, ZERO)
            used[instance.node_id] = held + Res(instance.cores, instance.memory_mb, instance.disk_gb)
        for claim in self.claims.values():
            if claim.zone == zone and claim.kind == "running":
                for node in claim.nodes:
                    used[node] = used.get(node, ZERO) + claim.need
        picks: list[str] = []
        for node, free in frees.items():
            held = used.get(node, ZERO)
            left = Res(free.cores - held.cores, free.memory_mb - held.memory_mb, free.disk_gb - held.disk_gb)
            picks += [node] * min(how_many(left, need), high - len(picks))
            if len(picks) == high:
                break
        return picks if len(picks) >= low else None

    def _forever_free(self, zone: str, now: float) -> dict[str, Res]:
        """Per node: its capacity less the peak its reservations hold from `now` on. Cached with the reservations'
        table for up to a minute (a peak that has passed meanwhile only makes the answer cautious)."""
        reserved, _ = self._reserved(zone)
        key = self._tables[zone][0]
        cached = self._forever.get(zone)
        if cached is not None and cached[0] == key and now - cached[1] < FOREVER_CACHE_SECONDS:
            return cached[2]
        frees = {node: reserved.free(node, now, INF, preempt=True) for node in reserved.capacity}
        self._forever[zone] = (key, now, frees)
        return frees

    def _claim_reservation(self, cr: CapacityReservation, low: int, token: Token, need: Res) -> bool:
        free = Counter(cr.nodes)
        free.subtract(self._running_nodes(cr))
        for claim in self.claims.values():
            if claim.lease_id == cr.reservation_id:
                free.subtract(claim.nodes)
        # An instance the CC put off its mapped node still uses a slot: the count decides, the nodes are hints.
        nodes = [n for n, k in free.items() for _ in range(max(k, 0))][: self.available(cr)]
        if len(nodes) < low:
            return False
        count = min(len(nodes), token.count)
        if count < token.count:
            self.compute.admission.shrink(token, count)
        token.nodes, token.lease_id = nodes[:count], cr.reservation_id
        self.claims[token.id] = Claim(cr.zone, cr.reservation_id, nodes[:count], need, "reserved")
        return True

    async def bind(self, token: Token, instance_ids: list[str]) -> None:
        """Written before the CC hears of the launch: these instances run in the token's lease."""
        if token.lease_id:
            await self.store.bind(token.lease_id, instance_ids)
            return
        claim = self.claims.get(token.id)
        if claim is not None and claim.request_ids:
            for request_id, instance_id in zip(claim.request_ids, instance_ids, strict=False):
                await self.store.bind(request_id, [instance_id])

    def settle(self, token: Token) -> None:
        """The launch is over (done or failed): its instances (if any) now hold their nodes themselves."""
        self.claims.pop(token.id, None)

    # --- time -------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="lease scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    def wake(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease scheduler tick failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick_seconds)
            self._wake.clear()

    async def tick(self) -> None:
        now = self.clock()
        for zone in list(self.compute.cc.clusters):
            if self.has_leases(zone):
                await self._nodes_known(zone)
        for cr in self.live_reservations():
            if cr.end_date is not None and cr.end_date <= now:
                await self._set_state(cr, "expired")
            elif cr.state == "scheduled" and cr.start_date <= now:
                await self._set_state(cr, "active")
        if self.spot is not None:
            await self.spot.tick(now)


def _iso(when: float) -> str:
    if when == INF:
        return "unlimited"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
