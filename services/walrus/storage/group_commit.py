"""Group commit: the metadata transactions that queue up while one batch commits are committed together, each inside
its own savepoint so that one failing rolls back only itself, and a transaction is acknowledged once a sync of the
log that began after its commit has finished. Syncs are shared: one covers every batch committed before it began,
and while it runs the next batches commit (see database.py), so one fdatasync serves many writers."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from services.walrus.storage.database import MetadataDb

T = TypeVar("T")
Transaction = Callable[[sqlite3.Connection], Any]
TX_BATCH = 256  # transactions committed together at most


def _run_batch(conn: sqlite3.Connection, batch: list[Transaction]) -> list[tuple[bool, Any]]:
    """On the database thread: every transaction of the batch, then one commit. (ok, result or exception) each."""
    conn.execute("BEGIN IMMEDIATE")
    outcomes: list[tuple[bool, Any]] = []
    try:
        for fn in batch:
            conn.execute("SAVEPOINT one")
            try:
                outcomes.append((True, fn(conn)))
            except Exception as err:
                conn.execute("ROLLBACK TO one")
                outcomes.append((False, err))
            conn.execute("RELEASE one")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcomes


class GroupCommit:
    def __init__(self, db: MetadataDb):
        self.db = db
        self._queue: list[tuple[Transaction, asyncio.Future[Any]]] = []
        self._running = False
        self._task: asyncio.Task[None] | None = None  # held: the loop keeps only a weak reference
        self._committed = 0  # batches committed so far
        self._synced = 0  # of those, on disk
        self._sync: asyncio.Task[None] | None = None  # the sync under way
        self._settling: set[asyncio.Task[None]] = set()

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` as one transaction on the database thread, where a whole transaction runs in one go (statements
        of concurrent tasks never interleave), and return its result once it is committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.append((fn, future))
        if not self._running:
            self._running = True
            self._task = loop.create_task(self._batches())
        return await future

    async def _batches(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:TX_BATCH], self._queue[TX_BATCH:]
                functions = [fn for fn, _ in batch]
                try:
                    outcomes = await self.db.run(functools.partial(_run_batch, batch=functions))
                except Exception as err:  # the commit itself failed: every transaction of the batch did
                    outcomes = [(False, err)] * len(batch)
                self._committed += 1
                settle = asyncio.get_running_loop().create_task(self._settle(batch, outcomes, self._committed))
                self._settling.add(settle)
                settle.add_done_callback(self._settling.discard)
        finally:
            self._running = False

    async def _settle(
        self, batch: list[tuple[Transaction, asyncio.Future[Any]]], outcomes: list[tuple[bool, Any]], number: int
    ) -> None:
        """Answer a committed batch's writers once it is on disk."""
        try:
            await self._durable(number)
        except Exception as err:  # the disk failed: committed, but nobody may count on it
            outcomes = [(False, err)] * len(batch)
        for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    async def _durable(self, number: int) -> None:
        """Wait until batch `number` is on disk, starting a sync (that covers every batch committed by then) when
        none under way covers it."""
        while self._synced < number:
            if self._sync is None or self._sync.done():
                self._sync = asyncio.get_running_loop().create_task(self._sync_up_to(self._committed))
            await asyncio.shield(self._sync)

    async def _sync_up_to(self, number: int) -> None:
        await self.db.sync()
        self._synced = max(self._synced, number)
