"""Pushes instance state changes to the CC at once (`NotifyInstances`), coalescing bursts.

Changes are collected by instance id; one sender task drains them, so a burst of 200 launches becomes a few
calls, never 200 waiting requests: while the NC is quiet, or nothing else is on its way (no other launch under
way), a change goes out at once; while changes keep coming each push waits a short linger for those behind it
(`Pacing`). A failed push is retried with backoff; the CC's
DescribeInstances polls are the safety net if it stays unreachable. After a restart the NC sends its full list
(`full=True`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection

from common.backoff import Backoff
from common.messages.cc_nc import Ack, InstanceInfo, NotifyInstancesRequest
from common.rpc import PeerUnreachable, RpcClient, RpcError

log = logging.getLogger("koala.nc.notify")
MAX_BATCH = 500
# Under load a push waits until LINGER after the previous one ended, so the running of many instances (booting is
# not pushed) shares a few pushes (each a signed call the CC verifies) instead of one push per change. BURST pushes
# go out at once after a quiet spell, so one launch's changes reach the CC, and the API, without waiting. Nor does a
# push wait when no other instance is being launched here (no change is coming to share it): the last running of a
# burst, or one launch after another.
LINGER = 0.02
BURST = 4


class Pacing:
    """A token bucket refilled only while no push is under way: one push's credit per `interval` of quiet, at most
    `burst`. Continuous changes are therefore paced like a fixed linger after every push; occasional ones are not
    delayed at all."""

    def __init__(self, burst: int, interval: float, clock: Callable[[], float] = time.monotonic):
        self.burst, self.interval, self.clock = burst, interval, clock
        self.credit = float(burst)
        self.quiet_since = clock()

    def delay(self) -> float:
        """How long the next push waits before it goes out (0: at once); its credit is spent."""
        now = self.clock()
        self.credit = min(float(self.burst), self.credit + (now - self.quiet_since) / self.interval) - 1
        self.quiet_since = now
        if self.credit >= 0:
            return 0.0
        wait, self.credit = -self.credit * self.interval, 0.0
        return wait

    def done(self) -> None:
        """A push ended: quiet time counts from now."""
        self.quiet_since = self.clock()


class Notifier:
    def __init__(
        self,
        client: RpcClient,
        cc_url: str,
        node_id: str,
        snapshot: Callable[[str], InstanceInfo | None],
        more_coming: Callable[[Collection[str]], bool],
    ):
        """`more_coming(ids)`: whether instances other than `ids` are changing (being launched) here."""
        self.client, self.cc_url, self.node_id, self.snapshot = client, cc_url, node_id, snapshot
        self.more_coming = more_coming
        self._dirty: dict[str, None] = {}
        self._full: Callable[[], list[InstanceInfo]] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pacing = Pacing(BURST, LINGER)
        self.sent = 0

    def start(self) -> None:
        if self.cc_url:
            self._task = asyncio.create_task(self._run(), name="notify cc")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def changed(self, instance_id: str) -> None:
        if self.cc_url:
            self._dirty[instance_id] = None
            self._wake.set()

    def full(self, listing: Callable[[], list[InstanceInfo]]) -> None:
        if self.cc_url:
            self._full = listing
            self._wake.set()

    async def _run(self) -> None:
        backoff = Backoff(0.2, 10.0)
        while True:
            await self._wake.wait()
            pause = self._pacing.delay()
            if pause and self.more_coming(self._dirty.keys()):
                await asyncio.sleep(pause)
            self._wake.clear()
            full, self._full = self._full, None
            if full is not None:
                instances, is_full = full(), True
                self._dirty.clear()
            else:
                ids = list(self._dirty)[:MAX_BATCH]
                for instance_id in ids:
                    self._dirty.pop(instance_id, None)
                instances = [info for info in map(self.snapshot, ids) if info is not None]
                is_full = False
            if self._dirty:
                self._wake.set()
            if not instances and not is_full:
                continue
            message = NotifyInstancesRequest(node_id=self.node_id, instances=instances, full=is_full)
            try:
                await self.client.call(self.cc_url, "NotifyInstances", message, Ack, timeout=10, expect_role="cc")
                self._pacing.done()
                self.sent += 1
                backoff.reset()
            except (RpcError, PeerUnreachable) as err:
                self._pacing.done()
                log.warning("NotifyInstances to %s failed (%s); retrying in %.1f s", self.cc_url, err, backoff.delay)
                if is_full:
                    self._full = full
                else:
                    for info in instances:
                        self._dirty.setdefault(info.instance_id, None)
                await backoff.wait()
                self._wake.set()
