"""The Cloud Controller's database: one aiosqlite connection (WAL, migrations in `migrations/`) and a write lock.

The connection runs in autocommit mode: a single statement commits by itself. Anything that must be atomic
(read-modify-write, several statements) goes through `transaction()`, which holds an asyncio lock so that
coroutines cannot interleave their statements inside one SQLite transaction:

    async with clc.db.transaction() as conn:
        await conn.execute("UPDATE ...", (...,))
        await conn.execute("INSERT ...", (...,))

Reads use `fetchall`/`fetchone` (one thread hop each). Reads are not blocked by a transaction in progress and
may see its uncommitted rows (same connection): do decisions that must be exact inside `transaction()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiosqlite

from common.db import open_db

MIGRATIONS = "services.cloud_controller.migrations"
FILE_NAME = "clc.db"


class Database:
    def __init__(self, conn: aiosqlite.Connection):
        self.conn = conn
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, state_dir: Path) -> Database:
        path = state_dir / FILE_NAME
        await asyncio.to_thread(_create_private, path)
        conn = await open_db(path, MIGRATIONS)
        # Autocommit, explicit BEGIN in transaction(). sqlite3 objects belong to aiosqlite's thread: set it there.
        await conn._execute(setattr, conn._conn, "isolation_level", None)
        return cls(conn)

    async def close(self) -> None:
        await self.conn.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
            await self.conn.execute("COMMIT")

    async def fetchall(self, sql: str, args: Iterable[Any] = ()) -> list[aiosqlite.Row]:
        return list(await self.conn.execute_fetchall(sql, tuple(args)))

    async def fetchone(self, sql: str, args: Iterable[Any] = ()) -> aiosqlite.Row | None:
        rows = list(await self.conn.execute_fetchall(sql, tuple(args)))
        return rows[0] if rows else None

    async def execute(self, sql: str, args: Iterable[Any] = ()) -> int:
        """One statement outside a transaction (it commits by itself); returns the rows changed."""
        async with self._lock:
            cursor = await self.conn.execute(sql, tuple(args))
            count = cursor.rowcount
            await cursor.close()
            return count


def _create_private(path: Path) -> None:
    """The database holds secret keys: create it readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
