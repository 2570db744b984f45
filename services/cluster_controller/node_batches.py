"""Calls about single instances to one node, coalesced: RunInstance calls into RunInstances, TerminateInstance
calls into TerminateInstances.

A reservation's dispatchers all call RunInstance at once (and a TerminateInstances of a thousand instances makes
a thousand TerminateInstance calls); those meant for the same node and made in the same turn of the event loop
leave as one signed call (a bounded count, and a body well inside the NC's 1 MiB limit), and each caller gets its
own answer or error exactly as a lone call would have given it. One call per node instead of one per instance:
the signing, verifying and HTTP work per instance drop by the batch's size. A node that does not know the batch
operation (an older NC) is sent single calls from then on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from common.messages import cc_nc
from common.rpc import RpcError

log = logging.getLogger("koala.cc.batches")
MAX_BODY = 512 * 1024  # bytes of requests per call; the NC accepts bodies up to 1 MiB

R = TypeVar("R")  # what one instance's call carries: a RunInstanceRequest, an instance id


class NodeBatches(Generic[R]):
    def __init__(
        self,
        send_one: Callable[[str, R], Awaitable[cc_nc.InstanceInfo]],
        send_many: Callable[[str, list[R]], Awaitable[list[cc_nc.InstanceResult]]],
        size: Callable[[R], int],
        max_count: int,
    ):
        self.send_one, self.send_many, self.size, self.max_count = send_one, send_many, size, max_count
        self._queues: dict[str, list[tuple[R, int, asyncio.Future[cc_nc.InstanceInfo]]]] = {}
        self._single: set[str] = set()  # nodes that answered UnknownOperation to the batch operation
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0  # for tests and benchmarks

    async def call(self, url: str, item: R) -> cc_nc.InstanceInfo:
        if url in self._single:
            return await self.send_one(url, item)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[cc_nc.InstanceInfo] = loop.create_future()
        queue = self._queues.setdefault(url, [])
        queue.append((item, self.size(item), future))
        if len(queue) == 1:  # the first of this turn: send once the other callers of this turn have queued theirs
            loop.call_soon(self._flush, url)
        return await future

    def _flush(self, url: str) -> None:
        queue = self._queues.pop(url, [])
        while queue:
            batch: list[tuple[R, int, asyncio.Future[cc_nc.InstanceInfo]]] = []
            size = 0
            while queue and len(batch) < self.max_count and (not batch or size + queue[0][1] <= MAX_BODY):
                entry = queue.pop(0)
                batch.append(entry)
                size += entry[1]
            task = asyncio.create_task(self._send(url, batch), name=f"batch to {url}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, url: str, batch: list[tuple[R, int, asyncio.Future[cc_nc.InstanceInfo]]]) -> None:
        if len(batch) == 1 or url in self._single:
            await asyncio.gather(*(self._one(url, item, future) for item, _, future in batch))
            return
        self.calls += 1
        try:
            results = await self.send_many(url, [item for item, _, _ in batch])
        except RpcError as err:
            if err.status == 404 and err.code == "UnknownOperation":
                log.info("node %s does not know the batch operation: single calls from now on", url)
                self._single.add(url)
                await self._send(url, batch)
                return
            for _, _, future in batch:
                _settle(future, err)
            return
        except Exception as err:  # every caller gets what the call got
            for _, _, future in batch:
                _settle(future, err)
            return
        if len(results) != len(batch):
            error = RpcError(502, "BadAnswer", f"{url} answered {len(results)} results for {len(batch)}")
            for _, _, future in batch:
                _settle(future, error)
            return
        for (_, _, future), result in zip(batch, results, strict=True):
            if result.info is not None:
                _settle(future, result.info)
            else:
                _settle(future, RpcError(result.status or 500, result.code or "InternalError", result.message))

    async def _one(self, url: str, item: R, future: asyncio.Future[cc_nc.InstanceInfo]) -> None:
        self.calls += 1
        try:
            _settle(future, await self.send_one(url, item))
        except Exception as err:  # the caller gets it
            _settle(future, err)


def _settle(future: asyncio.Future[cc_nc.InstanceInfo], outcome: cc_nc.InstanceInfo | BaseException) -> None:
    if future.done():  # its caller was cancelled
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
