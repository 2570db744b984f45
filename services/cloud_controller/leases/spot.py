"""Best-effort leases as EC2 Spot requests: queued FIFO with backfilling (slottable.plan_queue), fulfilled when
capacity frees, preempted when a capacity reservation (or an on-demand launch) needs their room.

A request's life (EC2's states and status codes):
  open/pending-evaluation -> open/pending-fulfillment (written before the launch; the launch's ClientToken is
  the request id, so a retry after a crash finds the same instances) -> active/fulfilled -> (instance ends)
  one-time: closed/instance-terminated-by-user | ...-no-capacity; persistent: open again, at its old position.
  A preempted lease is first given notice (`spot/instance-action` in the metadata, KOALA_SPOT_NOTICE_SECONDS
  before the reservation's start), then terminated, or suspended when its interruption behaviour is hibernate
  and the cloud can suspend (`suspend` hook set by setup); a suspended request is `disabled` until room returns
  on its node, when it is resumed before anything else in the queue starts.
Prices are always zero: a spot request is a priority, not a bid.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from common import ids
from services.cloud_controller.compute.errors import ComputeError, invalid
from services.cloud_controller.leases.slottable import INF, Request, Res, plan_queue, preemptions
from services.cloud_controller.leases.store import Preemption, SpotRequest

if TYPE_CHECKING:
    from services.cloud_controller.compute.launch import RunRequest
    from services.cloud_controller.compute.store import Instance, Reservation
    from services.cloud_controller.leases.scheduler import LeaseScheduler

log = logging.getLogger("koala.clc.spot")
MAX_COUNT = 100  # instances per RequestSpotInstances
MAX_OPEN = 10000  # open requests per account
LAUNCHES_AT_ONCE = 8
LAUNCH_BATCH = 100  # spot requests launched by one RunInstances
PREEMPT_LEAD = 5.0  # seconds before a reservation's start that its preemptions happen (at most the notice)
ACTED = ("instance-terminated-no-capacity", "instance-stopped-no-capacity")


@dataclass
class Owner:
    """The account a queued request is launched for (the compute engine's Principal)."""

    account_id: str
    user_id: str = ""
    is_admin: bool = False


Suspender = Callable[[str, str], Awaitable[bool]]  # (zone, instance id) -> done


class SpotQueue:
    def __init__(self, scheduler: LeaseScheduler, notice: float = 120.0):
        self.scheduler, self.notice = scheduler, notice
        self.store = scheduler.store
        self.compute = scheduler.compute
        self.suspend: Suspender | None = None  # set when the NCs can suspend (libvirt managed save)
        self.resume: Suspender | None = None
        self._launching: set[str] = set()
        self._making_room: dict[str, int] = {}  # zones where an on-demand launch is preempting spot leases

    def metadata(self, instance: Instance) -> dict[str, Any]:
        """The instance's `spot/` meta-data: `instance-action` (and `termination-time` for a termination) once a
        preemption notice is given; nothing otherwise (EC2 answers 404 then)."""
        lease = self.store.lease_of.get(instance.instance_id, "")
        request = self.store.spot.get(lease)
        if request is None or not request.notice_action or request.notice_time is None:
            return {}
        when = _iso(request.notice_time)
        entries = {"instance-action": json.dumps({"action": request.notice_action, "time": when})}
        if request.notice_action == "terminate":
            entries["termination-time"] = when
        return {"spot": entries}

    # --- requests -------------------------------------------------------------------------------------
    def active_in(self, zone: str) -> bool:
        return any(r.zone == zone and r.instance_id for r in self.store.spot.values())

    def get(self, owner_id: str, request_id: str) -> SpotRequest:
        if not ids.is_id(request_id, "sir"):
            raise ComputeError("InvalidSpotInstanceRequestID.Malformed", f'Invalid id: "{request_id[:40]}"')
        found = self.store.spot.get(ids.normalize(request_id))
        if found is None or found.owner_id != owner_id:
            raise ComputeError(
                "InvalidSpotInstanceRequestID.NotFound", f"The spot instance request ID '{request_id}' does not exist"
            )
        return found

    async def request(
        self,
        owner: Owner,
        spec: dict[str, Any],
        count: int,
        kind: str,
        interruption: str,
        valid_until: float | None,
        duration: float | None,
        client_token: str = "",
    ) -> list[SpotRequest]:
        if client_token:
            if len(client_token) > 64:
                raise invalid("ClientToken", "at most 64 characters")
            same = [
                r for r in self.store.spot.values() if r.owner_id == owner.account_id and r.client_token == client_token
            ]
            if same:
                return sorted(same, key=lambda r: r.position)
        if not 1 <= count <= MAX_COUNT:
            raise invalid("InstanceCount", f"between 1 and {MAX_COUNT}")
        if kind not in ("one-time", "persistent"):
            raise invalid("Type", "one-time or persistent")
        check_interruption(interruption, self.compute.store.images.get(spec.get("image_id", "")))
        now = time.time()
        if valid_until is not None and valid_until <= now:
            raise invalid("ValidUntil", "must be in the future")
        if duration is not None and not 0 < duration <= 6 * 3600:
            raise invalid("BlockDurationMinutes", "between 60 and 360 minutes")
        self.compute.vm_type(spec.get("instance_type", ""))
        zone = spec.get("zone", "")
        if zone and zone not in self.compute.cc.clusters:
            raise ComputeError("InvalidParameterValue", f"Invalid availability zone: [{zone[:64]}]")
        mine = sum(1 for r in self.store.spot.values() if r.owner_id == owner.account_id and r.state == "open")
        if mine + count > MAX_OPEN:
            raise ComputeError("MaxSpotInstanceCountExceeded", f"at most {MAX_OPEN} open spot requests")
        made: list[SpotRequest] = []
        position = self.store.next_position()
        for n in range(count):
            made.append(
                SpotRequest(
                    request_id=self._new_id(made),
                    owner_id=owner.account_id,
                    user_id=owner.user_id,
                    position=position + n,
                    type=kind,
                    state="open",
                    status_code="pending-evaluation",
                    status_message="Your Spot request has been submitted for review, and is pending evaluation.",
                    status_time=now,
                    interruption=interruption,
                    spec=spec,
                    create_time=now,
                    zone=zone,
                    valid_until=valid_until,
                    duration=duration,
                    client_token=client_token,
                )
            )
        await self.store.save_spot(*made)
        for request in made:
            self.store.spot[request.request_id] = request
        self.scheduler.wake()
        return made

    def _new_id(self, taken: list[SpotRequest]) -> str:
        while True:
            candidate = ids.new_id("sir")
            if candidate not in self.store.spot and all(r.request_id != candidate for r in taken):
                return candidate

    async def cancel(self, owner_id: str, request_ids: list[str]) -> list[SpotRequest]:
        found = [self.get(owner_id, i) for i in request_ids]
        changed = []
        for request in found:
            if request.state in ("open", "active", "disabled"):
                code = "request-canceled-and-instance-running" if self._live(request) else "canceled-before-fulfillment"
                self._status(request, code, "The request was cancelled by the user.")
                request.state = "cancelled"
                changed.append(request)
        if changed:
            await self.store.save_spot(*changed)
        return found

    def _live(self, request: SpotRequest) -> bool:
        instance = self.compute.store.instances.get(request.instance_id) if request.instance_id else None
        return instance is not None and (instance.live or instance.state == "stopped")

    @staticmethod
    def _status(request: SpotRequest, code: str, message: str) -> None:
        request.status_code, request.status_message, request.status_time = code, message, time.time()

    # --- RunInstances with InstanceMarketOptions: a one-time request fulfilled now or refused ------------
    async def run_now(
        self, owner: Owner, run_request: RunRequest, interruption: str, valid_until: float | None
    ) -> Reservation:
        spec = {"instance_type": run_request.instance_type or "m1.small", "zone": run_request.zone,
                "image_id": run_request.image_id}  # fmt: skip
        made = await self.request(owner, spec, run_request.max_count, "one-time", interruption, valid_until, None)
        run_request.spot = {"request_ids": [r.request_id for r in made]}
        for request in made:
            self._status(request, "pending-fulfillment", "Your Spot request is pending fulfillment.")
        await self.store.save_spot(*made)
        try:
            reservation = await self.compute.launcher.run_instances(owner, run_request)
        except Exception as err:
            for request in made:
                request.state = "failed" if not isinstance(err, ComputeError) else "closed"
                self._status(request, "capacity-not-available", getattr(err, "message", str(err))[:200])
            await self.store.save_spot(*made)
            raise
        await self._fulfilled(made, reservation, close_rest=True)
        return reservation

    async def _fulfilled(self, requests: list[SpotRequest], reservation: Reservation, close_rest: bool = False) -> None:
        by_request = {lease: i for i, lease in self.store.lease_of.items() if lease in {r.request_id for r in requests}}
        for request in requests:
            instance = self.compute.store.instances.get(by_request.get(request.request_id, ""))
            if instance is None or not instance.live:
                if close_rest:
                    request.state = "closed"
                self._status(request, "capacity-not-available", "Not enough capacity to fulfil the request.")
                continue
            request.state, request.instance_id, request.zone = "active", instance.instance_id, instance.zone
            request.notice_action, request.notice_time = "", None
            self._status(request, "fulfilled", "Your Spot request is fulfilled.")
        await self.store.save_spot(*requests)

    async def make_room(self, zones: list[str], need: Any, count: int) -> None:
        """An on-demand launch that fits only without best-effort leases: preempt them now (notice and act at
        once) in the first zone where that makes room, and wait for their instances to go."""
        if not any(self.active_in(z) for z in zones):
            return
        now = time.time()
        candidates = []
        for zone in zones:
            table = self.scheduler.table(zone, now)
            if zone not in self.scheduler.nodes or table.map_vms(need, count, now, INF, preempt=False, now=now):
                return  # room without preempting anything (or nothing known to decide on)
            picks = table.map_vms(need, count, now, INF, preempt=True)
            if picks is not None and table.leases("besteffort"):
                candidates.append((zone, table, picks))
        if not candidates:
            return  # refused anyway
        zone, table, picks = candidates[0]
        # The queue starts nothing in the zone until the launch has made its claim (synchronously after this
        # returns), or the room made here would go to the next spot request.
        self._making_room[zone] = self._making_room.get(zone, 0) + 1
        try:
            await self._preempt_for(zone, table, picks, need, now)
        finally:
            self._making_room[zone] -= 1
            if not self._making_room[zone]:
                del self._making_room[zone]

    async def _preempt_for(self, zone: str, table: Any, picks: list[str], need: Any, now: float) -> None:
        table.allocate("on-demand", picks, need, now, INF, "running")
        victims = [self.store.spot[v] for v in preemptions(table, now) if v in self.store.spot]
        reason = "an on-demand launch needs the capacity"
        for request in victims:
            request.notice_action, request.notice_time = notice_action(request.interruption, False), now
            await self._act(request, reason, now)
        for _ in range(300):  # up to 30 s for the CC to report them gone
            if not any(self._live(r) for r in victims if r.state != "disabled"):
                break
            await asyncio.sleep(0.1)
        await self.compute.capacity.refresh_capacity([zone])

    # --- time -----------------------------------------------------------------------------------------
    async def tick(self, now: float) -> None:
        await self._settle(now)
        for zone in list(self.compute.cc.clusters):
            if zone in self.scheduler.nodes:
                await self._preempt(zone, now)
        await self._fulfil(now)

    async def _settle(self, now: float) -> None:
        """Requests whose instance ended (or whose ValidUntil passed)."""
        changed = []
        if any(r.status_code == "pending-fulfillment" for r in self.store.spot.values() if r.state == "open"):
            # A launch a crash interrupted may have started its instance: the binding says so.
            bound = {lease: i for i, lease in self.store.lease_of.items() if lease.startswith("sir-")}
            for request in self.store.spot.values():
                instance = self.compute.store.instances.get(bound.get(request.request_id, ""))
                if (
                    request.state == "open"
                    and request.status_code == "pending-fulfillment"
                    and request.request_id not in self._launching
                    and instance is not None
                    and instance.live
                ):
                    request.state, request.instance_id, request.zone = "active", instance.instance_id, instance.zone
                    self._status(request, "fulfilled", "Your Spot request is fulfilled.")
                    changed.append(request)
        for request in self.store.spot.values():
            if request.state == "open" and request.valid_until is not None and request.valid_until <= now:
                request.state = "closed"
                self._status(request, "schedule-expired", "The request expired before it could be fulfilled.")
                changed.append(request)
            elif request.state in ("active", "cancelled") and request.instance_id and not self._live(request):
                instance = self.compute.store.instances.get(request.instance_id)
                preempted = request.status_code in ("instance-terminated-no-capacity", "marked-for-termination")
                if request.state == "cancelled":
                    request.instance_id = ""
                elif request.type == "persistent":
                    request.state, request.instance_id = "open", ""
                    self._status(request, "pending-evaluation", "The instance ended; the request is open again.")
                else:
                    request.state = "closed"
                    code = "instance-terminated-no-capacity" if preempted else "instance-terminated-by-user"
                    reason = instance.state_reason if instance is not None else "the instance is gone"
                    reason = request.status_message if preempted else reason  # the preemption's reason stays
                    self._status(request, code, reason[:200])
                changed.append(request)
        if changed:
            await self.store.save_spot(*changed)

    async def _preempt(self, zone: str, now: float) -> None:
        table = self.scheduler.table(zone, now)
        if not table.leases("besteffort"):
            return
        # Now (an active reservation or on-demand launch over-commits a node) and at each reservation start
        # within the notice period.
        # The action comes a little before the reservation's start, so its room is free when it starts.
        lead = min(PREEMPT_LEAD, self.notice)
        starts = sorted(
            (max(cr.start_date - lead, now), f"capacity reservation {cr.reservation_id} starts")
            for cr in self.scheduler.live_reservations(zone)
            if now < cr.start_date <= now + self.notice + lead
        )
        moments = [(now, "capacity is needed now"), *starts]
        due: dict[str, tuple[float, str]] = {}
        for at, reason in moments:
            for lease_id in preemptions(table, at + lead if at > now else at):
                if lease_id.startswith("sir-") and lease_id not in due:
                    due[lease_id] = (at, reason)
        noticed, acting = [], []
        for lease_id, (at, reason) in due.items():
            request = self.store.spot.get(lease_id)
            if request is None or request.state not in ("active", "cancelled") or not request.instance_id:
                continue
            if request.status_code in ACTED:
                continue  # preempted already; its instance is on its way out
            if not request.notice_action:
                request.notice_action = notice_action(request.interruption, self.suspend is not None)
                request.notice_time = at
                code = "marked-for-stop" if request.notice_action != "terminate" else "marked-for-termination"
                self._status(request, code, f"Preempted at {_iso(at)}: {reason}")
                noticed.append(request)
            if at <= now or (request.notice_time is not None and request.notice_time <= now):
                if request.status_code.startswith("marked-"):  # the reason the notice gave
                    reason = request.status_message.split(": ", 1)[-1]
                acting.append((request, reason))
        if noticed:
            await self.store.save_spot(*noticed)  # the notice is in the metadata from here on
            for request in noticed:
                log.info(
                    "%s (%s): notice %s at %s",
                    request.request_id,
                    request.instance_id,
                    request.notice_action,
                    _iso(request.notice_time or now),
                )
        for request, reason in acting:
            await self._act(request, reason, now)

    async def _act(self, request: SpotRequest, reason: str, now: float) -> None:
        instance = self.compute.store.instances.get(request.instance_id)
        if instance is None or instance.state not in ("pending", "running"):
            return
        action = "suspend" if request.notice_action == "hibernate" and self.suspend is not None else "terminate"
        if request.notice_action == "stop" and instance.root_device_type == "ebs":
            action = "stop"  # its volumes stay; started again (on any node) when room returns
        if action in ("suspend", "stop"):
            request.state = "disabled"
            done = "Suspended" if action == "suspend" else "Stopped"
            self._status(request, "instance-stopped-no-capacity", f"{done}: {reason}")
        else:
            self._status(request, "instance-terminated-no-capacity", f"Terminated: {reason}")
        await self.store.record_preemption(
            Preemption(now, request.request_id, instance.instance_id, action, reason), request
        )
        log.info("%s: %s %s (%s)", request.request_id, action, instance.instance_id, reason)
        if action == "stop":
            try:
                await self.compute.stop_start.stop(Owner(request.owner_id), [instance.instance_id])
                return
            except ComputeError as err:
                log.warning("%s: stop of %s failed (%s); terminating it", request.request_id, instance.instance_id, err)
                request.state = "active"
                self._status(request, "instance-terminated-no-capacity", f"Terminated (stop failed): {reason}")
                await self.store.save_spot(request)
        if action == "suspend" and self.suspend is not None:
            if await self.suspend(instance.zone, instance.instance_id):
                return
            log.warning("%s: suspend of %s failed; terminating it", request.request_id, instance.instance_id)
            request.state = "active"
            self._status(request, "instance-terminated-no-capacity", f"Terminated (suspend failed): {reason}")
            await self.store.save_spot(request)
        with contextlib.suppress(ComputeError):
            await self.compute.terminate(Owner(request.owner_id), [instance.instance_id])

    async def _fulfil(self, now: float) -> None:
        launches: list[tuple[SpotRequest, str, list[str]]] = []
        # Suspended leases first, each on its own node (its saved state and disks are there) when room returned.
        for request in sorted(self.store.spot.values(), key=lambda r: r.position):
            if request.state != "disabled" or request.request_id in self._launching or self.resume is None:
                continue
            instance = self.compute.store.instances.get(request.instance_id)
            if instance is None or instance.state != "stopped":
                continue
            need = Res(instance.cores, instance.memory_mb, 0)
            table = self.scheduler.table(instance.zone, now)
            if request.interruption == "stop" and instance.root_device_type == "ebs":  # any node of its zone
                picks = table.map_vms(need, 1, now, INF, preempt=False, now=now)
                if picks is not None:
                    launches.append((request, instance.zone, list(picks)))
                continue
            if not instance.node_id:
                continue
            if table.map_vms(need, 1, now, INF, preempt=False, now=now, nodes=[instance.node_id]) is not None:
                launches.append((request, instance.zone, [instance.node_id]))
        waiting = sorted(
            (r for r in self.store.spot.values() if r.state == "open" and r.request_id not in self._launching),
            key=lambda r: r.position,
        )
        if not waiting and not launches:
            return
        taken: set[str] = set()
        for zone in self.compute.cc.clusters:
            if zone in self._making_room:
                continue
            if zone not in self.scheduler.nodes:
                await self.scheduler.refresh_nodes(zone)
            queue, by_id = [], {}
            for r in waiting:
                if r.request_id in taken or (r.zone and r.zone != zone):
                    continue
                wanted = self.scheduler.need_of(r.spec.get("instance_type", ""))
                if wanted is None:
                    continue
                queue.append(Request(r.request_id, wanted, 1, r.duration))
                by_id[r.request_id] = r
            if not queue:
                continue
            plan = plan_queue(self.scheduler.table(zone, now), queue, now)
            for started, nodes in plan.start:
                taken.add(started.lease_id)
                launches.append((by_id[started.lease_id], zone, nodes))
        if not launches:
            return
        for request, zone, _ in launches:
            request.zone = zone
            if request.state == "open" and request.status_code != "pending-fulfillment":
                self._status(request, "pending-fulfillment", "Your Spot request is pending fulfillment.")
            self._launching.add(request.request_id)
        await self.store.save_spot(*(r for r, _, _ in launches))  # written before the launches (and their tokens)
        # Requests of one account with the same launch specification in one zone go in one RunInstances (the
        # queue's nodes as placement hints), so a queue drains at the pace of the CC's batch launches.
        groups: dict[tuple[Any, ...], list[tuple[SpotRequest, list[str]]]] = {}
        for request, zone, nodes in launches:
            if request.state == "disabled":
                key: tuple[Any, ...] = ("resume", request.request_id)
            else:
                key = (zone, request.owner_id, json.dumps(request.spec, sort_keys=True))
            groups.setdefault(key, []).append((request, nodes))
        batches = []
        for key, members in groups.items():
            for first in range(0, len(members), LAUNCH_BATCH):
                batches.append((key, members[first : first + LAUNCH_BATCH]))
        gate = asyncio.Semaphore(LAUNCHES_AT_ONCE)

        async def one(zone: str, members: list[tuple[SpotRequest, list[str]]]) -> None:
            async with gate:
                try:
                    await self._launch(zone, members)
                except Exception as err:
                    log.info("%s not fulfilled: %s", ", ".join(r.request_id for r, _ in members), err)
                finally:
                    for request, _ in members:
                        self._launching.discard(request.request_id)

        zone_of = {r.request_id: zone for r, zone, _ in launches}
        await asyncio.gather(*(one(zone_of[members[0][0].request_id], members) for _, members in batches))

    async def _launch(self, zone: str, members: list[tuple[SpotRequest, list[str]]]) -> None:
        request = members[0][0]
        if request.state == "disabled" and request.interruption == "stop":  # a stopped lease: start it again
            try:
                await self.compute.stop_start.start(Owner(request.owner_id), [request.instance_id])
            except ComputeError as err:
                log.info("%s: start of %s refused: %s", request.request_id, request.instance_id, err)
                return
            request.state = "active"
            self._status(request, "fulfilled", "Started again.")
            request.notice_action, request.notice_time = "", None
            await self.store.record_preemption(
                Preemption(time.time(), request.request_id, request.instance_id, "start", "room returned"), request
            )
            return
        if request.state == "disabled":  # a suspended lease: resume it where it is
            if self.resume is not None and await self.resume(zone, request.instance_id):
                request.state = "active"
                self._status(request, "fulfilled", "Resumed.")
                request.notice_action, request.notice_time = "", None
                await self.store.record_preemption(
                    Preemption(time.time(), request.request_id, request.instance_id, "resume", "room returned"), request
                )
            return
        from services.cloud_controller.compute.launch import RunRequest

        spec = request.spec
        requests = [r for r, _ in members]
        run = RunRequest(
            image_id=spec.get("image_id", ""),
            min_count=1,
            max_count=len(members),
            key_name=spec.get("key_name", ""),
            key_material=spec.get("key_material", ""),
            groups=list(spec.get("groups", [])),
            group_ids=list(spec.get("group_ids", [])),
            user_data=spec.get("user_data", ""),
            instance_type=spec.get("instance_type", ""),
            zone=zone,
            kernel_id=spec.get("kernel_id", ""),
            ramdisk_id=spec.get("ramdisk_id", ""),
            client_token=f"{request.request_id}-{int(request.status_time)}",
        )
        run.spot = {
            "request_ids": [r.request_id for r in requests],
            "nodes": [n for _, nodes in members for n in nodes],
        }
        try:
            reservation = await self.compute.launcher.run_instances(Owner(request.owner_id, request.user_id), run)
        except ComputeError as err:
            for one in requests:
                self._status(one, "capacity-not-available", err.message[:200])
                if err.code not in ("InsufficientInstanceCapacity", "InstanceLimitExceeded"):
                    one.state = "failed"  # the launch cannot work (image gone, bad type): never retried
            await self.store.save_spot(*requests)
            return
        await self._fulfilled(requests, reservation)


def check_interruption(interruption: str, image: Any = None) -> None:
    """The behaviour is one of EC2's; stop needs an EBS-backed image (checked when the image is known)."""
    if interruption not in ("terminate", "stop", "hibernate"):
        raise invalid("InstanceInterruptionBehavior", "terminate, stop or hibernate")
    if interruption == "stop" and image is not None and image.root_device_type != "ebs":
        raise ComputeError("InvalidParameterCombination", "InstanceInterruptionBehavior stop needs an EBS-backed image")


def notice_action(interruption: str, can_suspend: bool) -> str:
    if interruption == "stop":
        return "stop"
    return "hibernate" if interruption == "hibernate" and can_suspend else "terminate"


def _iso(when: float) -> str:
    if when == INF:
        return "never"
    return dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
