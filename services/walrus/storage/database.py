"""The embedded backend's metadata database: one SQLite connection that lives on one thread of its own.

Why not aiosqlite's connection: a group commit (group_commit.py) runs many writers' transactions on the connection
in one go, statement after statement, and aiosqlite offers no public way to run a function on its thread; one
awaited statement at a time would cost a thread round trip per statement and let other tasks' reads interleave
with an open transaction. So this module does what aiosqlite does inside (a single worker thread owns the
connection, calls are queued to it in order) through the standard library's public API, and still uses
`common.db` to create the schema and run the migrations.

Durability: commits write the write-ahead log without waiting for the disk (synchronous=NORMAL), and `sync` then
makes everything committed so far durable with one fdatasync of the log, on a second thread, so that the next
transactions run on the database thread while the disk works (group_commit.py acknowledges a commit only after a
sync that began after it). A checkpoint syncs the log and the database itself before it reuses the log, so a synced
commit stays on disk. Without the separate sync this is what synchronous=FULL does at every commit.

Ordering: every call runs on the one thread in the order it was made, and its result reaches the event loop in the
order the calls finished. A task that reads a row in one call therefore gets it before the continuation of any
later commit runs (see EmbeddedBackend.open_object).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from common.db import open_db

T = TypeVar("T")
MIGRATIONS = "services.walrus.migrations"
log = logging.getLogger("koala.walrus.storage")


class MetadataDb:
    def __init__(self, path: Path):
        self.path = path
        self.wal_path = path.with_name(path.name + "-wal")
        self._thread: ThreadPoolExecutor | None = None
        self._syncer: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        """Bring the schema up to date (common.db's migrations), then open the connection for good."""
        migrated = await open_db(self.path, MIGRATIONS)  # WAL mode is a property of the file: it stays on
        await migrated.close()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="walrus-db")
        self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="walrus-db-sync")

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(self.path, isolation_level=None)  # transactions are explicit (BEGIN)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")  # commits are made durable by `sync`
            conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()  # opens the log (creates -wal)
            return conn

        self._conn = await asyncio.get_running_loop().run_in_executor(self._thread, connect)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(connection)` on the database thread, after every call made before it."""
        conn, thread = self._conn, self._thread
        if conn is None or thread is None:
            raise RuntimeError("storage not started")
        return await asyncio.get_running_loop().run_in_executor(thread, fn, conn)

    async def sync(self) -> None:
        """Everything committed before this call, on disk (an fdatasync of the write-ahead log)."""
        syncer = self._syncer
        if syncer is None:
            raise RuntimeError("storage not started")
        await asyncio.get_running_loop().run_in_executor(syncer, _fdatasync, self.wal_path)

    def call(self, fn: Callable[[sqlite3.Connection], None]) -> None:
        """`fn(connection)` on the database thread, after every call made before it, without waiting for it (from
        any thread; `fn` reports its own outcome)."""
        conn, thread = self._conn, self._thread
        if conn is None or thread is None:
            raise RuntimeError("storage not started")
        thread.submit(fn, conn).add_done_callback(_log_failure)

    def call_syncer(self, fn: Callable[[], None]) -> None:
        """`fn()` on the sync thread (which runs `sync`), without waiting for it (from any thread)."""
        syncer = self._syncer
        if syncer is None:
            raise RuntimeError("storage not started")
        syncer.submit(fn).add_done_callback(_log_failure)

    def sync_now(self) -> None:
        """Blocking, on the sync thread: everything committed before this call, on disk."""
        _fdatasync(self.wal_path)

    async def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one read, in one trip to the database thread."""
        return await self.run(lambda conn: conn.execute(sql, args).fetchall())

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        thread, self._thread = self._thread, None
        syncer, self._syncer = self._syncer, None
        if syncer is not None:
            await asyncio.get_running_loop().run_in_executor(syncer, _fdatasync, self.wal_path)  # after any under way
            syncer.shutdown(wait=False)
        if thread is None:
            return
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(thread, conn.close)
        thread.shutdown(wait=False)  # idle now: its last call (the close) has finished


def _log_failure(done: Future[None]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.error("metadata database call failed", exc_info=done.exception())


def _fdatasync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)
