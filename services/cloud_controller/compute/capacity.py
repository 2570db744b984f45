"""The zones' capacity reports kept fresh: DescribeResources per zone into the admission's books, now (a launch
refused on a stale report, the zones action, the polls) or soon after a change (one refresh for a burst)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from common.rpc import PeerUnreachable, RpcError
from services.cloud_controller.compute.admission import Admission
from services.cloud_controller.compute.cc_client import ClusterClient
from services.cloud_controller.compute.vmtypes import VmTypes

log = logging.getLogger("koala.clc.compute")
COALESCE_SECONDS = 0.05  # one refresh for a burst of launches or ends in a zone


class CapacityRefresh:
    def __init__(
        self,
        admission: Admission,
        cc: ClusterClient,
        vmtypes: VmTypes,
        background: Callable[[Coroutine[Any, Any, Any]], None],
    ):
        self.admission, self.cc, self.vmtypes, self.background = admission, cc, vmtypes, background
        self._pending: set[str] = set()

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
        if zone in self._pending:
            return
        self._pending.add(zone)

        async def later() -> None:
            try:
                await asyncio.sleep(COALESCE_SECONDS)
            finally:
                self._pending.discard(zone)
            await self.refresh_zone(zone)

        self.background(later())
