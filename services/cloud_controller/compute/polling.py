"""Polling, the safety net under the CCs' pushes: per zone, capacity (DescribeResources), the public address
pool, the network mode and the instances (DescribeInstances, applied as a full report); housekeeping (expired
capacity reservations, terminated instances forgotten after they have been visible long enough).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from common.messages.network import DescribeNetworksRequest
from common.rpc import PeerUnreachable, RpcError
from services.cloud_controller.compute.part import EnginePart

if TYPE_CHECKING:
    from services.cloud_controller.compute.engine import Compute

log = logging.getLogger("koala.clc.compute")


class Poller(EnginePart):
    """The per-zone polling loops and housekeeping of the engine."""

    def __init__(self, engine: Compute):
        super().__init__(engine)
        self.admission, self.networks, self.vmtypes = engine.admission, engine.networks, engine.vmtypes
        self._tasks: list[asyncio.Task[Any]] = []
        self._pollers: dict[str, asyncio.Task[Any]] = {}
        self._polling = True
        self._refresh_pending: set[str] = set()

    def start(self) -> None:
        for zone in self.cc.clusters:
            self._start_poller(zone)
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="compute housekeeping"))

    def _start_poller(self, zone: str) -> None:
        if zone not in self._pollers:
            self._pollers[zone] = asyncio.create_task(self._poll_loop(zone), name=f"poll {zone}")

    def zone_changed(self, zone: str, url: str | None) -> None:
        """The cluster registry added (url) or removed (None) a zone."""
        if url is None:
            task = self._pollers.pop(zone, None)
            if task is not None:
                task.cancel()
            self.admission.zones.pop(zone, None)
        else:
            self.admission.known_zone(zone)
            if self._polling:
                self._start_poller(zone)

    async def refresh_capacity(self, zones: list[str] | None = None) -> None:
        await asyncio.gather(*(self.refresh_zone(z) for z in (zones or list(self.cc.clusters))))

    async def refresh_zone(self, zone: str) -> None:
        sent_at = self.admission.clock()
        try:
            report = await self.cc.describe_resources(zone, self.vmtypes.list())
        except (RpcError, PeerUnreachable) as err:
            log.debug("DescribeResources %s failed: %s", zone, err)
            self.admission.unreachable(zone)
            return
        self.admission.update(report, sent_at, zone)

    def schedule_refresh(self, zone: str) -> None:
        if zone in self._refresh_pending:
            return
        self._refresh_pending.add(zone)

        async def later() -> None:
            try:
                await asyncio.sleep(0.05)  # one refresh for a burst of launches
            finally:
                self._refresh_pending.discard(zone)
            await self.refresh_zone(zone)

        self.engine.background(later())

    async def poll_zone(self, zone: str) -> None:
        await self.refresh_zone(zone)
        await self.engine.elastic.refresh_pool(zone)
        await self.refresh_network_mode(zone)
        try:
            answer = await self.cc.describe_instances(zone)
        except (RpcError, PeerUnreachable) as err:
            log.debug("DescribeInstances %s failed: %s", zone, err)
            return
        await self.engine.reports.apply_report(zone, answer.instances, full=True)
        stuck = [i.instance_id for i in self.store.instances.values() if i.zone == zone and i.state == "shutting-down"]
        # Live at the CC but terminated here (e.g. its launch failed on a timeout or a CC crash): it must go too.
        stuck += [
            item.instance_id
            for item in answer.instances
            if item.state in ("Pending", "Extant")
            and (known := self.store.instances.get(item.instance_id)) is not None
            and known.zone == zone
            and known.state == "terminated"
        ]
        if stuck:
            await self.engine.terminate_quietly(zone, stuck)
        await self.engine.stop_start.reconcile(zone)  # stops and starts the CC has not acted on

    async def refresh_network_mode(self, zone: str) -> None:
        try:
            # The mode and limits, not every network.
            answer = await self.cc.describe_networks(zone, DescribeNetworksRequest(names=["koala-none"]))
        except (RpcError, PeerUnreachable):
            return
        self.engine.zone_modes[zone] = answer.mode
        if answer.mode.startswith("MANAGED") and answer.vlan_max:
            self.networks.vlan_min = max(self.networks.vlan_min, answer.vlan_min)
            self.networks.vlan_max = min(self.networks.vlan_max, answer.vlan_max)
            self.networks.addrs_per_net = answer.addrs_per_net or self.networks.addrs_per_net

    async def _poll_loop(self, zone: str) -> None:
        while True:
            try:
                await self.poll_zone(zone)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("polling %s failed", zone)
            await asyncio.sleep(self.settings.poll_interval)

    async def housekeeping(self) -> None:
        self.admission.expire()
        limit = time.time() - self.settings.terminated_visible
        buried = [
            i.instance_id
            for i in self.store.instances.values()
            if i.state == "terminated" and i.terminated_at and i.terminated_at < limit
        ]
        if buried:
            await self.store.forget(buried)
            for listener in self.engine.on_forget:
                try:
                    await listener(buried)
                except Exception:
                    log.exception("forget listener failed")

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(min(self.settings.poll_interval, 30.0))
            try:
                await self.housekeeping()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("housekeeping failed")

    async def stop(self) -> None:
        self._polling = False
        tasks = self._tasks + list(self._pollers.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._pollers.clear()
