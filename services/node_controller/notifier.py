"""Pushes instance state changes to the CC at once (`NotifyInstances`), coalescing bursts.

Changes are collected by instance id; one sender task drains them, so a burst of 200 launches becomes a few
calls, never 200 waiting requests: while other instances are being launched here, each push waits a short linger
for their changes; otherwise (nothing else on its way) a change goes out at once. A failed push is retried with
backoff; the CC's DescribeInstances polls are the safety net if it stays unreachable. After a restart the NC sends
its full list (`full=True`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection

from common.backoff import Backoff
from common.messages.cc_nc import Ack, InstanceInfo, NotifyInstancesRequest
from common.rpc import PeerUnreachable, RpcClient, RpcError

log = logging.getLogger("koala.nc.notify")
MAX_BATCH = 500
# While other instances are being launched here, a push waits this long for their changes, so the running of many
# instances (booting is not pushed) shares a few pushes (each a signed call the CC verifies) instead of one push per
# change. With no other launch under way no change is coming to share it, and the push goes at once: one launch
# (or the last of a burst) shows running in the API as soon as the NC has it.
LINGER = 0.02


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
            if self.more_coming(self._dirty.keys()):
                await asyncio.sleep(LINGER)
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
                self.sent += 1
                backoff.reset()
            except (RpcError, PeerUnreachable) as err:
                log.warning("NotifyInstances to %s failed (%s); retrying in %.1f s", self.cc_url, err, backoff.delay)
                if is_full:
                    self._full = full
                else:
                    for info in instances:
                        self._dirty.setdefault(info.instance_id, None)
                await backoff.wait()
                self._wake.set()
