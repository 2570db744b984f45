"""What both engines offer: a `Database` (reads, single statements, serialised transactions) and, inside a
transaction, a `Transaction` whose `execute` answers a `Cursor` (awaited, or used as `async with`)."""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Awaitable, Generator, Iterable, Sequence
from typing import Any

from common.db import Statement

# A result row: both engines' rows index by column name and by position, and `dict(row)` works.
Row = Any


class DatabaseError(Exception):
    """A statement the engine refused (syntax, constraint, missing table), whichever the engine."""


class Cursor:
    """The outcome of one statement: its rows (if it returns any) and how many rows it changed."""

    def __init__(self, rows: Sequence[Row], rowcount: int):
        self._rows = list(rows)
        self.rowcount = rowcount

    async def fetchone(self) -> Row | None:
        return self._rows[0] if self._rows else None

    async def fetchall(self) -> list[Row]:
        return list(self._rows)

    async def close(self) -> None:
        """Nothing to release: the rows are already here."""


class PendingCursor:
    """`await tx.execute(...)` or `async with tx.execute(...) as cursor:`, as aiosqlite allows."""

    def __init__(self, outcome: Awaitable[Cursor]):
        self._outcome = outcome

    def __await__(self) -> Generator[Any, None, Cursor]:
        return self._outcome.__await__()

    async def __aenter__(self) -> Cursor:
        return await self._outcome

    async def __aexit__(self, *exc: object) -> None:
        return None


class Transaction(abc.ABC):
    """Statements inside one atomic transaction (`Database.transaction()`)."""

    @abc.abstractmethod
    def execute(self, sql: str, args: Iterable[Any] = ()) -> PendingCursor: ...

    @abc.abstractmethod
    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None: ...

    async def fetchall(self, sql: str, args: Iterable[Any] = ()) -> list[Row]:
        return await (await self.execute(sql, args)).fetchall()

    async def fetchone(self, sql: str, args: Iterable[Any] = ()) -> Row | None:
        return await (await self.execute(sql, args)).fetchone()


class Database(abc.ABC):
    """One service's database. Transactions are serialised inside the process (one writer at a time, as SQLite
    has anyway); reads outside a transaction see committed data."""

    engine: str  # "sqlite" | "postgresql"

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractAsyncContextManager[Transaction]: ...

    @abc.abstractmethod
    async def fetchall(self, sql: str, args: Iterable[Any] = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, args: Iterable[Any] = ()) -> Row | None:
        rows = await self.fetchall(sql, args)
        return rows[0] if rows else None

    async def execute(self, sql: str, args: Iterable[Any] = ()) -> int:
        """One statement in a transaction of its own; returns the rows changed."""
        async with self.transaction() as tx:
            return (await tx.execute(sql, args)).rowcount

    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        async with self.transaction() as tx:
            await tx.executemany(sql, rows)

    async def write(self, statements: Sequence[Statement]) -> None:
        """One transaction of writes: each statement run for each of its rows (an engine may do it in one hop)."""
        async with self.transaction() as tx:
            for sql, rows in statements:
                if rows:
                    await tx.executemany(sql, rows)

    @abc.abstractmethod
    async def close(self) -> None: ...
