"""aiosqlite in WAL mode with a busy timeout and versioned schema migrations.

Each service keeps numbered SQL files (`0001_init.sql`, `0002_...sql`) in its `migrations` package. The
`schema_version` table records which have run; the missing ones run in order, each in its own transaction.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

log = logging.getLogger("koala.db")
_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


T = TypeVar("T")


class MigrationError(Exception):
    pass


# One statement and the rows it is run for (executemany): what `write_together` writes.
Statement = tuple[str, Sequence[Sequence[Any]]]


async def in_thread(db: aiosqlite.Connection, work: Callable[..., T], *args: Any) -> T:
    """`work(conn, *args)` on aiosqlite's own thread, with its sqlite3 connection, in one hop. aiosqlite has no
    public call for this; this is the one place that reaches into its internals (every database test goes
    through it, so a change in aiosqlite shows at once)."""
    return await db._execute(work, db._conn, *args)  # type: ignore[no-untyped-call,no-any-return]


async def write_together(db: aiosqlite.Connection, statements: Sequence[Statement]) -> None:
    """One transaction in one hop to aiosqlite's thread: each statement for each of its rows, then the commit (or
    the rollback, on an error). Through aiosqlite's own calls each statement and the commit were a hop of their
    own (a thread hand-off and a wake of the event loop each, ~0.1-0.3 ms on a busy 2-core machine)."""
    await in_thread(db, _write_together, statements)


def _write_together(conn: sqlite3.Connection, statements: Sequence[Statement]) -> None:
    if conn.isolation_level is None:  # autocommit (common.database.sqlite): the transaction is begun here
        conn.execute("BEGIN IMMEDIATE")
    try:
        for sql, rows in statements:
            if rows:
                conn.executemany(sql, rows)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise


def migration_files(package: str) -> list[tuple[int, str, str]]:
    """(version, name, sql) for every migration of `package`, in order; gaps and duplicates are errors."""
    found = []
    for entry in resources.files(package).iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    found.sort()
    for expected, (version, name, _) in enumerate(found, start=1):
        if version != expected:
            raise MigrationError(f"{package}: migration {name} out of sequence (expected {expected:04d})")
    return found


async def open_db(path: str | Path, migrations_package: str | None = None) -> aiosqlite.Connection:
    """Open (creating if needed) a SQLite database in WAL mode and bring its schema up to date."""
    db = await aiosqlite.connect(str(path))
    db.row_factory = aiosqlite.Row
    await db.execute("PRAGMA journal_mode=WAL")
    await db.execute("PRAGMA busy_timeout=5000")
    await db.execute("PRAGMA synchronous=NORMAL")
    await db.execute("PRAGMA foreign_keys=ON")
    if migrations_package:
        try:
            await migrate(db, migrations_package)
        except BaseException:
            await db.close()
            raise
    return db


async def migrate(db: aiosqlite.Connection, package: str) -> int:
    """Apply pending migrations; return the schema version now in force."""
    await db.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
        " applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
    )
    await db.commit()
    async with db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version") as cursor:
        row = await cursor.fetchone()
    current = row[0] if row else 0
    files = migration_files(package)
    if current > len(files):
        raise MigrationError(f"database schema version {current} is newer than this code ({len(files)})")
    for version, name, sql in files[current:]:
        log.info("applying migration %s", name)
        try:
            await db.executescript(
                f"BEGIN;\n{sql}\nINSERT INTO schema_version(version, name) VALUES ({version}, '{name}');\nCOMMIT;"
            )
        except Exception:
            await db.rollback()
            raise
        current = version
    return current
