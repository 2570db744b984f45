"""Polling, the safety net under the CCs' pushes: per zone, capacity (DescribeResources), the public address
pool, the network mode and the instances (DescribeInstances, applied as a full report); housekeeping (expired
capacity reservations, terminated instances forgotten after they have been visible long enough).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from common.messages.network import DescribeNetworksRequest
from common.rpc import PeerUnreachable, RpcError
from services.cloud_controller.compute.admission import Admission
from services.cloud_controller.compute.capacity import CapacityRefresh
from services.cloud_controller.compute.cc_client import ClusterClient
from services.cloud_controller.compute.elastic import Elastic
from services.cloud_controller.compute.networks import Networks
from services.cloud_controller.compute.reports import Reports
from services.cloud_controller.compute.stop_start import StopStart
from services.cloud_controller.compute.store import Store

if TYPE_CHECKING:
    from services.cloud_controller.compute.engine import Settings

log = logging.getLogger("koala.clc.compute")


class PollerEngine(Protocol):
    """What the polls ask of the engine they are part of (engine.Compute)."""

    zone_modes: dict[str, str]
    on_forget: list[Callable[[list[str]], Awaitable[None]]]

    async def terminate_quietly(self, zone: str, instance_ids: list[str]) -> None: ...


class Poller:
    """The per-zone polling loops and housekeeping of the engine: per zone, capacity (`capacity`), the public
    pool (`elastic`), the network mode (into `networks`' limits) and the instances (applied by `reports`, the
    stops and starts the CC has not acted on reconciled by `stop_start`); expired capacity reservations
    (`admission`) and long-terminated instances (`store`) dropped."""

    def __init__(
        self,
        engine: PollerEngine,
        store: Store,
        settings: Settings,
        cc: ClusterClient,
        admission: Admission,
        networks: Networks,
        capacity: CapacityRefresh,
        elastic: Elastic,
        reports: Reports,
        stop_start: StopStart,
    ):
        self.engine, self.store, self.settings, self.cc = engine, store, settings, cc
        self.admission, self.networks, self.capacity = admission, networks, capacity
        self.elastic, self.reports, self.stop_start = elastic, reports, stop_start
        self._tasks: list[asyncio.Task[Any]] = []
        self._pollers: dict[str, asyncio.Task[Any]] = {}
        self._polling = True

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

    async def poll_zone(self, zone: str) -> None:
        await self.capacity.refresh_zone(zone)
        await self.elastic.refresh_pool(zone)
        await self.refresh_network_mode(zone)
        try:
            answer = await self.cc.describe_instances(zone)
        except (RpcError, PeerUnreachable) as err:
            log.debug("DescribeInstances %s failed: %s", zone, err)
            return
        await self.reports.apply_report(zone, answer.instances, full=True)
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
        await self.stop_start.reconcile(zone)  # stops and starts the CC has not acted on

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
