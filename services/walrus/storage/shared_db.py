"""Walrus's metadata in PostgreSQL, for several Walrus front ends serving one object store (shared.py).

The embedded backend's transactions are plain functions over a `sqlite3.Connection`, run one batch at a time on a
worker thread (database.py, group_commit.py), in SQL both engines understand. This module runs the very same
functions against PostgreSQL: `BlockingConnection` has the connection's shape (`execute` answering rows with
`fetchone`, `fetchall` and iteration) and runs each statement on the event loop's asyncpg connection, the worker
thread waiting for it. So one set of transactions serves both engines, and a fix to one is a fix to both.

Consistency between front ends: every write batch takes one transaction-level advisory lock right after BEGIN, so
batches of all front ends run one after another, and each statement (READ COMMITTED) sees every batch committed
before it: the checks a transaction makes (the bucket exists, the key's current version, a quota) hold against
the other front ends' writes too. A batch holds the lock for the few statements of its writers and one COMMIT;
object bytes are written to the store before, outside the lock. The COMMIT is durable when it returns
(synchronous_commit), so `sync` has nothing left to do. Reads use a few sessions of their own and see committed
data.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import asyncpg

from common.database.postgres import STATEMENT_TIMEOUT, connect, migrate, placeholders
from services.walrus.storage.database import MIGRATIONS, MetadataDb

T = TypeVar("T")
log = logging.getLogger("koala.walrus.storage")
COMPONENT = "walrus"
WRITE_LOCK = 0x77616C727573  # advisory lock key of Walrus's metadata writes ("walrus")
SETUP_LOCK = 0x77616C727574  # serialises two front ends setting up the schema at once
READ_SESSIONS = 8
CHANNEL = "walrus_changes"


def _notify_function(name: str, payload: str) -> str:
    """A trigger function that notifies CHANNEL of the row changed (`payload`: SQL over `{row}`)."""
    return f"""CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('{CHANNEL}', {payload.format(row="OLD")});
    ELSE
        PERFORM pg_notify('{CHANNEL}', {payload.format(row="NEW")});
    END IF;
    RETURN NULL;
END $$"""


# What PostgreSQL needs beyond the migrations both engines share: a notification on each committed change (sent
# at COMMIT, with it), which other front ends use to drop what they cached and to tell their change hooks
# (shared.py); ['v', bucket, key] for a key's versions, ['b', bucket] for a bucket's settings.
NOTIFICATIONS = [
    _notify_function("walrus_version_changed", "json_build_array('v', {row}.bucket, {row}.key)::text"),
    _notify_function("walrus_bucket_changed", "json_build_array('b', {row}.name)::text"),
    _notify_function("walrus_bucket_config_changed", "json_build_array('b', {row}.bucket)::text"),
    "CREATE OR REPLACE TRIGGER walrus_versions_changed AFTER INSERT OR UPDATE OR DELETE ON versions"
    " FOR EACH ROW EXECUTE FUNCTION walrus_version_changed()",
    # not on the counters (object_count, bytes_used) that every PUT changes
    "CREATE OR REPLACE TRIGGER walrus_buckets_changed AFTER UPDATE OF acl, versioning, object_lock, lifecycle"
    " OR DELETE ON buckets FOR EACH ROW EXECUTE FUNCTION walrus_bucket_changed()",
    "CREATE OR REPLACE TRIGGER walrus_bucket_configs_changed AFTER INSERT OR UPDATE OR DELETE ON bucket_configs"
    " FOR EACH ROW EXECUTE FUNCTION walrus_bucket_config_changed()",
]


class Rows:
    """A statement's rows, as a sqlite3 cursor hands them out."""

    def __init__(self, rows: Sequence[Any]):
        self._rows = rows

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return list(self._rows)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


class BlockingConnection:
    """For code on a worker thread: each statement runs on the event loop's asyncpg connection while the thread
    waits. `BEGIN IMMEDIATE` (the embedded engine's write transaction) becomes BEGIN plus the write lock."""

    def __init__(self, loop: asyncio.AbstractEventLoop, conn: asyncpg.Connection):
        self.loop, self.conn = loop, conn
        self.in_transaction = False

    def _wait(self, work: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result()

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Rows:
        if sql == "BEGIN IMMEDIATE":
            self._wait(self.conn.execute("BEGIN"))
            self.in_transaction = True
            self._wait(self.conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK))
            return Rows([])
        if sql in ("COMMIT", "ROLLBACK"):
            self.in_transaction = False
        return Rows(self._wait(self.conn.fetch(placeholders(sql), *args, timeout=STATEMENT_TIMEOUT)))


class ReadSessions:
    """A few read sessions, each running one query at a time, handed out in turn: what asyncpg's pool does, without
    its per-query bookkeeping (timeouts on acquire, release hooks), which cost as much CPU as the query itself on
    Walrus's hottest path (one per GET)."""

    def __init__(self, url: str, size: int):
        self.url, self.size = url, size
        self._idle: list[asyncpg.Connection] = []
        self._waiting: collections.deque[asyncio.Future[asyncpg.Connection]] = collections.deque()
        self._all: list[asyncpg.Connection] = []

    async def open(self) -> None:
        self._all = [await connect(self.url) for _ in range(self.size)]
        self._idle = list(self._all)

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[Any]:
        if self._idle:
            conn = self._idle.pop()
        else:
            waiter: asyncio.Future[asyncpg.Connection] = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                conn = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():  # handed a session just as we were cancelled
                    self._give_back(waiter.result())
                raise
        try:
            if conn.is_closed():  # broke earlier (a server restart, a network cut): a new session in its place
                fresh = await connect(self.url)
                self._all[self._all.index(conn)] = fresh
                conn = fresh
            return list(await conn.fetch(sql, *args, timeout=STATEMENT_TIMEOUT))
        finally:
            self._give_back(conn)

    def _give_back(self, conn: asyncpg.Connection) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():  # (a cancelled waiter is skipped)
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    async def close(self) -> None:
        sessions, self._all, self._idle = self._all, [], []
        for conn in sessions:
            with contextlib.suppress(Exception):
                await conn.close()


class SharedMetadataDb(MetadataDb):
    """MetadataDb's interface (run, sync, query) on a PostgreSQL database that several front ends share."""

    def __init__(self, url: str):  # the parent's SQLite attributes stay unset: nothing here uses them
        self.url = url
        self._pg_thread: ThreadPoolExecutor | None = None
        self._writer: asyncpg.Connection | None = None
        self._reads: ReadSessions | None = None
        self._reconnect = asyncio.Lock()

    async def open(self) -> None:
        """Bring the schema up to date (the shared migrations, then PostgreSQL's own additions), open the writer
        session and the read pool."""
        conn = await connect(self.url)
        try:
            await migrate(conn, MIGRATIONS, COMPONENT)
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", SETUP_LOCK)
                await _binary_key_order(conn)
                for statement in NOTIFICATIONS:
                    await conn.execute(statement)
        except BaseException:
            await conn.close()
            raise
        self._writer = conn
        self._reads = ReadSessions(self.url, READ_SESSIONS)
        await self._reads.open()
        self._pg_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="walrus-pg")

    @property
    def writer_pid(self) -> int:
        return self._writer.get_server_pid() if self._writer is not None else 0

    async def _writer_session(self) -> asyncpg.Connection:
        """The writer session, opened again if the last one broke (a server restart, a network cut)."""
        async with self._reconnect:
            if self._writer is None or self._writer.is_closed():
                log.warning("reconnecting Walrus's metadata writer to PostgreSQL")
                self._writer = await connect(self.url)
            return self._writer

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        thread = self._pg_thread
        if thread is None:
            raise RuntimeError("storage not started")
        loop = asyncio.get_running_loop()
        facade = BlockingConnection(loop, await self._writer_session())
        # the transactions only call execute / fetchone / fetchall / iterate, which the facade offers
        return await loop.run_in_executor(thread, fn, cast(sqlite3.Connection, facade))

    async def sync(self) -> None:
        """Nothing: a PostgreSQL COMMIT is durable when it returns."""

    async def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self._reads is None:
            raise RuntimeError("storage not started")
        return await self._reads.fetch(placeholders(sql), args)

    async def close(self) -> None:
        thread, self._pg_thread = self._pg_thread, None
        reads, self._reads = self._reads, None
        writer, self._writer = self._writer, None
        if thread is not None:
            thread.shutdown(wait=False)
        if reads is not None:
            await reads.close()
        if writer is not None:
            await writer.close()


async def _binary_key_order(conn: asyncpg.Connection) -> None:
    """Keys compared by code point (COLLATE "C"), whatever the database's default collation."""
    default = await conn.fetchval("SELECT datcollate FROM pg_database WHERE datname = current_database()")
    for table in ("versions", "uploads"):
        collation = await conn.fetchval(
            "SELECT collation_name FROM information_schema.columns WHERE table_name = $1 AND column_name = 'key'"
            " AND table_schema = current_schema()",
            table,
        )
        if collation == "C" or (collation is None and default in ("C", "POSIX")):
            continue
        await conn.execute(f'ALTER TABLE {table} ALTER COLUMN key TYPE TEXT COLLATE "C"')
