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

The two threads are `Worker`s, not one-worker ThreadPoolExecutors: an executor's submit builds a Future (with its
Condition) and takes three locks, and py-spy put it at about 7 % of the event loop's samples under 4 KiB PUTs (issue
18); a worker's job is one put on a SimpleQueue. (Measured alone, the CPU per PUT moved within the noise.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from common.db import open_db

T = TypeVar("T")
MIGRATIONS = "services.walrus.migrations"
log = logging.getLogger("koala.walrus.storage")


class Worker:
    """One thread running the jobs given to it one after the other, in the order given (from any thread)."""

    def __init__(self, name: str):
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def call(self, job: Callable[[], None]) -> None:
        """Run `job()` after the jobs given before it; a failure is logged (jobs report their own outcome)."""
        self._jobs.put(job)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the thread, after the jobs given before it; its result (or exception) on the event loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def job() -> None:
            try:
                result = fn(*args)
            except BaseException as err:  # handed to the waiting task
                _answer(loop, _fail, future, err)
            else:
                _answer(loop, _succeed, future, result)

        self._jobs.put(job)
        return await future

    def stop(self) -> None:
        """No more jobs: the thread ends after those given so far."""
        self._jobs.put(None)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:
                log.exception("metadata database call failed")


def _answer(loop: asyncio.AbstractEventLoop, settle: Callable[..., None], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(settle, *args)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass


def _succeed(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():  # the waiting task may have been cancelled
        future.set_result(result)


def _fail(future: asyncio.Future[Any], err: BaseException) -> None:
    if not future.done():
        future.set_exception(err)


class MetadataDb:
    def __init__(self, path: Path):
        self.path = path
        self.wal_path = path.with_name(path.name + "-wal")
        self._thread: Worker | None = None
        self._syncer: Worker | None = None
        self._conn: sqlite3.Connection | None = None
        # The log, open for good: a sync is one fdatasync, where opening and closing it each time let go of the
        # interpreter lock twice more per sync, and each time the sync thread waited to take it back (issue 18).
        # SQLite keeps the log file (truncating or rewriting it in place) while a connection to the database is open.
        self._wal_fd: int | None = None

    async def open(self) -> None:
        """Bring the schema up to date (common.db's migrations), then open the connection for good."""
        migrated = await open_db(self.path, MIGRATIONS)  # WAL mode is a property of the file: it stays on
        await migrated.close()
        self._thread = Worker("walrus-db")
        self._syncer = Worker("walrus-db-sync")

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(self.path, isolation_level=None)  # transactions are explicit (BEGIN)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")  # commits are made durable by `sync`
            conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()  # opens the log (creates -wal)
            return conn

        self._conn = await self._thread.run(connect)
        self._wal_fd = os.open(self.wal_path, os.O_RDONLY | os.O_CLOEXEC)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(connection)` on the database thread, after every call made before it."""
        conn, thread = self._conn, self._thread
        if conn is None or thread is None:
            raise RuntimeError("storage not started")
        return await thread.run(fn, conn)

    async def sync(self) -> None:
        """Everything committed before this call, on disk (an fdatasync of the write-ahead log)."""
        syncer = self._syncer
        if syncer is None:
            raise RuntimeError("storage not started")
        await syncer.run(self.sync_now)

    def call(self, fn: Callable[[sqlite3.Connection], None]) -> None:
        """`fn(connection)` on the database thread, after every call made before it, without waiting for it (from
        any thread; `fn` reports its own outcome)."""
        conn, thread = self._conn, self._thread
        if conn is None or thread is None:
            raise RuntimeError("storage not started")
        thread.call(lambda: fn(conn))

    def call_syncer(self, fn: Callable[[], None]) -> None:
        """`fn()` on the sync thread (which runs `sync`), without waiting for it (from any thread)."""
        syncer = self._syncer
        if syncer is None:
            raise RuntimeError("storage not started")
        syncer.call(fn)

    def sync_now(self) -> None:
        """Blocking, on the sync thread: everything committed before this call, on disk."""
        if self._wal_fd is None:
            raise RuntimeError("storage not started")
        os.fdatasync(self._wal_fd)

    async def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one read, in one trip to the database thread."""
        return await self.run(lambda conn: conn.execute(sql, args).fetchall())

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        thread, self._thread = self._thread, None
        syncer, self._syncer = self._syncer, None
        if syncer is not None:
            await syncer.run(self.sync_now)  # after any under way
            syncer.stop()
        wal_fd, self._wal_fd = self._wal_fd, None
        if wal_fd is not None:
            os.close(wal_fd)
        if thread is None:
            return
        if conn is not None:
            await thread.run(conn.close)
        thread.stop()  # idle now: its last call (the close) has finished
