"""Instance state from the CCs: their pushes (NotifyInstances) and the polls' answers, applied to the records.
Level-triggered: a report says what is, the records follow (never backwards), and an instance a CC stops
reporting is terminated after the grace period.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Protocol

from common.messages.clc_cc import Ack, ClusterInstance, NotifyInstancesRequest
from common.rpc import RpcError
from services.cloud_controller.compute.capacity import CapacityRefresh
from services.cloud_controller.compute.cc_client import ClusterClient
from services.cloud_controller.compute.stop_start import StopStart
from services.cloud_controller.compute.store import Instance, Store

if TYPE_CHECKING:
    from services.cloud_controller.compute.engine import Settings

CC_STATES = {"Pending": "pending", "Extant": "running", "Teardown": "terminated"}
# Instances of a report applied between two turns of the event loop: with the `applied` listeners' serializing of
# those that changed (~25 us each), a few ms; 500 held the loop for tens of ms on a busy machine.
APPLY_CHUNK = 200


class ReportsEngine(Protocol):
    """What applying reports asks of the engine it is part of (engine.Compute)."""

    async def free_resources(self, instances: list[Instance]) -> None: ...
    def changed(self, instances: list[Instance]) -> None: ...
    def applied(self, instances: list[Instance]) -> None: ...


class Reports:
    """Instance state from the CCs: pushes and polled reports applied to the engine's records (`store`), the
    zones' capacity refreshed (`capacity`) when instances end or stop (`stop_start` tells a stop)."""

    def __init__(
        self,
        engine: ReportsEngine,
        store: Store,
        settings: Settings,
        cc: ClusterClient,
        stop_start: StopStart,
        capacity: CapacityRefresh,
    ):
        self.engine, self.store, self.settings, self.cc = engine, store, settings, cc
        self.stop_start, self.capacity = stop_start, capacity

    async def notify(self, message: NotifyInstancesRequest) -> Ack:
        """A CC's push (role cc, checked by the caller to speak for the zone): the instances whose state
        changed, or all of them when `full`."""
        if message.zone not in self.cc.clusters:
            raise RpcError(403, "UnknownZone", f"zone {message.zone!r} is not one of this cloud's clusters")
        await self.apply_report(message.zone, message.instances, message.full)
        return Ack()

    async def apply_report(self, zone: str, reported: list[ClusterInstance], full: bool) -> list[Instance]:
        now = time.time()
        changed: list[Instance] = []
        ended: list[Instance] = []
        seen: set[str] = set()
        told = 0  # changed[:told] handed to the engine's `applied` listeners (the DescribeInstances XML)
        for n, item in enumerate(reported):
            if n and n % APPLY_CHUNK == 0:
                # A poll's full list of a big zone: requests (DescribeInstances) get their turn in between. Each
                # instance's change is made in one step, so a reader sees every instance as before or after.
                self.engine.applied(changed[told:])
                told = len(changed)
                await asyncio.sleep(0)
            instance = self.store.instances.get(item.instance_id)
            if instance is None or instance.zone != zone:
                continue  # not ours (the CC's own orphans are its business)
            if item.reservation_id and item.reservation_id != instance.run_id:
                continue  # about an earlier run of a stopped and started instance
            seen.add(instance.instance_id)
            instance.last_seen = now
            dirty = False
            if item.node_id and item.node_id != instance.node_id:
                instance.node_id, dirty = item.node_id, True
            if item.net.private_ip and item.net.private_ip != instance.private_ip:
                old, instance.private_ip, dirty = instance.private_ip, item.net.private_ip, True
                self.store.reindex_ip(instance, old)
            if item.net.public_ip and not instance.public_ip:
                instance.public_ip, dirty = item.net.public_ip, True
            state = CC_STATES.get(item.state)
            if state == "running" and item.detail == "suspended":
                state = "stopped"  # saved to disk on its node (a suspended spot instance, or the admin's doing)
            elif item.detail in ("suspending", "resuming"):
                state = None  # on its way: the CC's answer to the call, or the next report, settles it
            if state is not None and state != instance.state:
                if state == "pending" and instance.state != "pending":
                    pass  # an old report; never go backwards
                elif state == "running" and instance.state in ("shutting-down", "stopping"):
                    pass  # terminating or stopping: wait for Teardown
                elif state == "terminated" and self.stop_start.stops(instance, item.detail):
                    why = self.stop_start.reason(instance, item.reason)
                    if self.store.set_state(instance, "stopped", why, now):
                        dirty = True
                        self.capacity.schedule_refresh(zone)  # its node's capacity is free again
                else:
                    # A user's termination stays the reason, whatever words the CC uses for the teardown.
                    user = instance.state == "shutting-down" and instance.state_reason == "User initiated"
                    reason = "User initiated" if user else item.reason
                    if self.store.set_state(instance, state, reason, now):
                        dirty = True
                        if state == "terminated":
                            ended.append(instance)
            if dirty:
                changed.append(instance)
        if full:
            for instance in self.store.instances.values():
                if instance.zone != zone or instance.instance_id in seen:
                    continue
                if instance.state == "stopping":  # its run is over at the CC
                    self.store.set_state(instance, "stopped", self.stop_start.reason(instance), now)
                    changed.append(instance)
                    continue
                if not instance.live:
                    continue
                if instance.state == "shutting-down":
                    self.store.set_state(instance, "terminated", "User initiated", now)
                elif now - max(instance.last_seen, instance.launch_time) > self.settings.lost_after:
                    # The CC has not reported it for the whole grace period: it is gone.
                    if instance.root_device_type == "ebs":  # its volumes outlive the lost run: stopped, not ended
                        self.store.set_state(instance, "stopped", "Server.InternalError: lost by the cluster", now)
                        changed.append(instance)
                        continue
                    self.store.set_state(instance, "terminated", "Server.InternalError: lost by the cluster", now)
                else:
                    continue
                ended.append(instance)
                changed.append(instance)
        self.engine.applied(changed[told:])
        if ended:
            await self.engine.free_resources(ended)
            for ended_zone in {i.zone for i in ended}:
                self.capacity.schedule_refresh(ended_zone)  # the CC gave their capacity back before it told us
        if changed:
            await self.store.save_reported(changed)
            self.engine.changed(changed)
        return changed
