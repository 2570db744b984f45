"""RunInstance calls to one node coalesced into RunInstances calls.

A reservation's dispatchers all call RunInstance at once; those meant for the same node and made in the same turn
of the event loop leave as one signed call (up to MAX_RUN_BATCH, and a body well inside the NC's 1 MiB limit),
and each caller gets its own answer or error exactly as a lone RunInstance would have given it. One call per
node instead of one per instance: the signing, verifying and HTTP work per instance drop by the batch's size.
A node that does not know RunInstances (an older NC) is sent single calls from then on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from common.messages import cc_nc
from common.rpc import RpcError

log = logging.getLogger("koala.cc.batches")
MAX_BODY = 512 * 1024  # bytes of requests per call; the NC accepts bodies up to 1 MiB

SendOne = Callable[[str, cc_nc.RunInstanceRequest], Awaitable[cc_nc.InstanceInfo]]
Queued = tuple[cc_nc.RunInstanceRequest, int, "asyncio.Future[cc_nc.InstanceInfo]"]  # request, its size, answer
SendMany = Callable[[str, cc_nc.RunInstancesRequest], Awaitable[cc_nc.RunInstancesResponse]]


class RunBatches:
    def __init__(self, send_one: SendOne, send_many: SendMany):
        self.send_one, self.send_many = send_one, send_many
        self._queues: dict[str, list[Queued]] = {}
        self._single: set[str] = set()  # nodes that answered UnknownOperation to RunInstances
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0  # for tests and benchmarks

    async def run(self, url: str, request: cc_nc.RunInstanceRequest) -> cc_nc.InstanceInfo:
        if url in self._single:
            return await self.send_one(url, request)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[cc_nc.InstanceInfo] = loop.create_future()
        queue = self._queues.setdefault(url, [])
        queue.append((request, len(request.model_dump_json()), future))
        if len(queue) == 1:  # the first of this turn: send once the other callers of this turn have queued theirs
            loop.call_soon(self._flush, url)
        return await future

    def _flush(self, url: str) -> None:
        queue = self._queues.pop(url, [])
        while queue:
            batch: list[Queued] = []
            size = 0
            while queue and len(batch) < cc_nc.MAX_RUN_BATCH and (not batch or size + queue[0][1] <= MAX_BODY):
                item = queue.pop(0)
                batch.append(item)
                size += item[1]
            task = asyncio.create_task(self._send(url, batch), name=f"RunInstances {url}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, url: str, batch: list[Queued]) -> None:
        if len(batch) == 1 or url in self._single:
            await asyncio.gather(*(self._one(url, request, future) for request, _, future in batch))
            return
        self.calls += 1
        try:
            answer = await self.send_many(url, cc_nc.RunInstancesRequest(instances=[r for r, _, _ in batch]))
        except RpcError as err:
            if err.status == 404 and err.code == "UnknownOperation":
                log.info("node %s does not know RunInstances: single calls from now on", url)
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
        if len(answer.results) != len(batch):
            error = RpcError(502, "BadAnswer", f"{url} answered {len(answer.results)} results for {len(batch)}")
            for _, _, future in batch:
                _settle(future, error)
            return
        for (_, _, future), result in zip(batch, answer.results, strict=True):
            if result.info is not None:
                _settle(future, result.info)
            else:
                _settle(future, RpcError(result.status or 500, result.code or "InternalError", result.message))

    async def _one(
        self, url: str, request: cc_nc.RunInstanceRequest, future: asyncio.Future[cc_nc.InstanceInfo]
    ) -> None:
        self.calls += 1
        try:
            _settle(future, await self.send_one(url, request))
        except Exception as err:  # the caller gets it
            _settle(future, err)


def _settle(future: asyncio.Future[cc_nc.InstanceInfo], outcome: cc_nc.InstanceInfo | BaseException) -> None:
    if future.done():  # its caller was cancelled
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
