"""Group commit: the metadata transactions that queue up while one commits are committed together, with one fsync
for many writers, each inside its own savepoint so that one failing rolls back only itself."""

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
                for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
        finally:
            self._running = False
