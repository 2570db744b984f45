"""Instance rows written in shared transactions (group commit).

Every state change is still written before it is acted on: `save` returns only once its row is committed. What
changes is that rows saved while a commit is under way wait for the next one together, so a burst of launches
(four writes each) costs a few transactions, not four commits and eight round trips to SQLite's thread per
instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiosqlite

log = logging.getLogger("koala.nc.records")

_UPSERT = (
    "INSERT INTO instances(instance_id, request, state, detail, reason, launch_time, updated_at, teardown_at, pins)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(instance_id) DO UPDATE SET request = excluded.request,"
    " state = excluded.state, detail = excluded.detail, reason = excluded.reason, launch_time = excluded.launch_time,"
    " updated_at = excluded.updated_at, teardown_at = excluded.teardown_at, pins = excluded.pins"
)

Row = tuple[str, str, str, str, str, float, float, float | None, str]  # in _UPSERT's column order


class InstanceRecords:
    def __init__(self, db: aiosqlite.Connection):
        self.db = db
        self._pending: dict[str, Row] = {}  # the next transaction's rows, the latest per instance
        self._next: asyncio.Future[None] | None = None  # resolved when they are committed
        self._writer: asyncio.Task[None] | None = None
        self.transactions = 0  # for tests and benchmarks

    async def save(self, row: Row) -> None:
        """Write `row` (instance_id first); returns once it is committed."""
        self._pending[row[0]] = row
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        committed = self._next
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="nc records")
        await asyncio.shield(committed)  # a cancelled caller does not cancel the others' commit

    async def _write(self) -> None:
        while self._next is not None:
            rows, committed = list(self._pending.values()), self._next
            self._pending, self._next = {}, None
            try:
                await self.db.executemany(_UPSERT, rows)
                await self.db.commit()
            except Exception as err:
                log.error("cannot write %d instance records: %s", len(rows), err)
                with contextlib.suppress(Exception):
                    await self.db.rollback()
                committed.set_exception(err)
                committed.exception()  # retrieved here: a caller may be gone
                continue
            self.transactions += 1
            committed.set_result(None)
