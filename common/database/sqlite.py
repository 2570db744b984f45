"""The embedded engine: one aiosqlite connection (WAL, migrations by `common.db`), autocommit, with an explicit
BEGIN IMMEDIATE for transactions, serialised by an asyncio lock so coroutines never interleave statements
inside one SQLite transaction."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from common.database.base import Cursor, Database, DatabaseError, PendingCursor, Row, Transaction
from common.db import Statement, in_thread, open_db, write_together


class _SqliteTransaction(Transaction):
    def __init__(self, conn: aiosqlite.Connection):
        self.conn = conn

    def execute(self, sql: str, args: Iterable[Any] = ()) -> PendingCursor:
        return PendingCursor(self._execute(sql, tuple(args)))

    async def _execute(self, sql: str, args: tuple[Any, ...]) -> Cursor:
        # One hop to aiosqlite's thread for the statement, its rows and the cursor's close (three hops through
        # aiosqlite's cursor API: a third of a small write transaction's time, measured by bench/lease_bench.py).
        try:
            rows, rowcount = await in_thread(self.conn, _run, sql, args)
        except sqlite3.DatabaseError as err:
            raise DatabaseError(str(err)) from err
        return Cursor(rows, rowcount if rowcount >= 0 else len(rows))

    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        try:
            await self.conn.executemany(sql, [tuple(r) for r in rows])
        except sqlite3.DatabaseError as err:
            raise DatabaseError(str(err)) from err


class SqliteDatabase(Database):
    engine = "sqlite"

    def __init__(self, conn: aiosqlite.Connection, path: Path):
        self.conn, self.path = conn, path
        self._lock = asyncio.Lock()
        self._tx = _SqliteTransaction(conn)

    @classmethod
    async def open(cls, path: Path, migrations: str | None) -> SqliteDatabase:
        await asyncio.to_thread(_create_private, path)
        conn = await open_db(path, migrations)
        # Autocommit, explicit BEGIN in transaction(). sqlite3 objects belong to aiosqlite's thread: set it there.
        await in_thread(conn, setattr, "isolation_level", None)
        return cls(conn, path)

    async def close(self) -> None:
        await self.conn.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._lock:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._tx
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
            await self.conn.execute("COMMIT")

    async def fetchall(self, sql: str, args: Iterable[Any] = ()) -> list[Row]:
        """Reads share the connection: they may see a transaction in progress (decide exactly inside one)."""
        try:
            return list(await self.conn.execute_fetchall(sql, tuple(args)))
        except sqlite3.DatabaseError as err:
            raise DatabaseError(str(err)) from err

    async def execute(self, sql: str, args: Iterable[Any] = ()) -> int:
        async with self._lock:  # autocommit: one statement commits by itself
            return (await self._tx.execute(sql, args)).rowcount

    async def write(self, statements: Sequence[Statement]) -> None:
        """BEGIN, the statements and COMMIT in one hop to aiosqlite's thread (four hops for a launch's record
        through transaction(), each a thread hand-off and a wake of the event loop)."""
        async with self._lock:
            try:
                await write_together(self.conn, statements)
            except sqlite3.DatabaseError as err:
                raise DatabaseError(str(err)) from err


def _run(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> tuple[list[Row], int]:
    """In aiosqlite's thread: one statement, its rows and its row count."""
    cursor = conn.execute(sql, args)
    try:
        return cursor.fetchall(), cursor.rowcount
    finally:
        cursor.close()


def _create_private(path: Path) -> None:
    """The database may hold secret keys: create it readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
