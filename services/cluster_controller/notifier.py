"""Pushes instance state changes to the CLC at once (NotifyInstances), coalescing what piles up while a push
is in flight, and retrying with backoff while the CLC is away. The CLC's polls are the safety net."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from common.backoff import Backoff
from common.messages.clc_cc import Ack, ClusterInstance, NotifyInstancesRequest
from common.rpc import PeerUnreachable, RpcClient, RpcError

log = logging.getLogger("koala.cc.notify")
BATCH = 500  # instances per push: well inside the 1 MiB body limit


class Notifier:
    def __init__(self, client: RpcClient, clc_url: str, zone: str, timeout: float = 5.0):
        self.client, self.url, self.zone, self.timeout = client, clc_url, zone, timeout
        self.pending: dict[str, ClusterInstance] = {}
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self._failing = False

    def changed(self, report: ClusterInstance) -> None:
        self.pending[report.instance_id] = report  # a newer report of the same instance replaces the older
        self.wake.set()

    def start(self) -> None:
        if self.url and self.task is None:
            self.task = asyncio.create_task(self._run(), name="notify clc")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        backoff = Backoff(0.2, 10.0)
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.pending:
                ids = list(self.pending)[:BATCH]
                batch = [self.pending.pop(i) for i in ids]
                try:
                    await self.client.call(
                        self.url,
                        "NotifyInstances",
                        NotifyInstancesRequest(zone=self.zone, instances=batch),
                        Ack,
                        timeout=self.timeout,
                        expect_role="clc",
                    )
                except (RpcError, PeerUnreachable) as err:
                    for report in batch:  # put back what no newer report superseded
                        self.pending.setdefault(report.instance_id, report)
                    if not self._failing:
                        log.warning("cannot push %d instance states to the CLC: %s", len(batch), err)
                    self._failing = True
                    await backoff.wait()
                    continue
                if self._failing:
                    log.info("pushing instance states to the CLC again")
                self._failing = False
                backoff.reset()
