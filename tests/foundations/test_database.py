"""The one database layer (common.database) on both engines: the same statements, migrations, transactions and
errors on SQLite and on a real PostgreSQL server (the session's `postgres` fixture)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from common.database import Database, DatabaseError, open_database, upsert
from common.database.postgres import ddl, placeholders
from common.db import MigrationError

MIGRATIONS = {
    "0001_init.sql": """
        CREATE TABLE things (
            id TEXT PRIMARY KEY,
            size INTEGER NOT NULL DEFAULT 0,
            at REAL NOT NULL DEFAULT 0,
            note TEXT
        );
        CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, what TEXT NOT NULL);
        CREATE UNIQUE INDEX things_note ON things(note) WHERE note != '';
    """,
    "0002_counter.sql": "CREATE TABLE counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL);",
}


@pytest.fixture
def migrations(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"dbtest_{request.node.name.replace('[', '_').replace(']', '').replace('-', '_')}"
    package = tmp_path / "pkgs" / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for file, sql in MIGRATIONS.items():
        (package / file).write_text(sql)
    sys.path.insert(0, str(package.parent))
    try:
        yield name
    finally:
        sys.path.remove(str(package.parent))
        sys.modules.pop(name, None)


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    if request.param == "sqlite":
        return tmp_path / "test.db"
    return request.getfixturevalue("postgres").create_database("layer")


@pytest.fixture
async def db(location: str | Path, migrations: str) -> AsyncIterator[Database]:
    database = await open_database(location, migrations, "test")
    try:
        yield database
    finally:
        await database.close()


async def test_values_round_trip_exactly(db: Database) -> None:
    now = time.time()
    await db.execute("INSERT INTO things (id, size, at, note) VALUES (?, ?, ?, ?)", ("a?b", 2**40, now, None))
    row = await db.fetchone("SELECT id, size, at, note FROM things WHERE id = ? AND note IS NULL", ("a?b",))
    assert row is not None
    assert (row["id"], row["size"], row["at"], row["note"]) == ("a?b", 2**40, now, None)  # doubles, 64-bit ints
    assert (row[0], dict(row)["size"]) == ("a?b", 2**40)
    # A `?` inside a string literal is text, not a placeholder.
    assert (await db.fetchone("SELECT 'what?' AS q, id FROM things WHERE id = ?", ("a?b",)))["q"] == "what?"
    assert await db.fetchone("SELECT id FROM things WHERE id = ?", ("nothing",)) is None


async def test_transactions_commit_or_roll_back_whole(db: Database) -> None:
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO things (id, size) VALUES (?, ?)", ("one", 1))
        await tx.executemany("INSERT INTO things (id, size) VALUES (?, ?)", [("two", 2), ("three", 3)])
        async with tx.execute("SELECT COUNT(*) FROM things") as cursor:
            assert (await cursor.fetchone())[0] == 3
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            cursor = await tx.execute("UPDATE things SET size = size + 10 WHERE size >= ?", (2,))
            assert cursor.rowcount == 2
            raise RuntimeError("changed my mind")
    rows = await db.fetchall("SELECT id, size FROM things ORDER BY size")
    assert [tuple(r) for r in rows] == [("one", 1), ("two", 2), ("three", 3)]
    assert await db.execute("DELETE FROM things WHERE size > ?", (1,)) == 2
    # SUM of integers is an integer on both engines.
    assert (await db.fetchone("SELECT SUM(size) FROM things"))[0] == 1


async def test_write_commits_all_its_statements_or_none(db: Database) -> None:
    """Database.write (a launch's record: one hop to SQLite's thread): every statement for each of its rows in one
    transaction, undone whole by an error in its last row, and serialised with transaction()'s."""
    insert = "INSERT INTO things (id, size) VALUES (?, ?)"
    await db.write([(insert, [("a", 1), ("b", 2)]), ("INSERT INTO events (what) VALUES (?)", [("made",)])])
    with pytest.raises(DatabaseError):
        await db.write([("UPDATE things SET size = size + 10", [()]), (insert, [("c", 3), ("a", 4)])])
    assert [tuple(r) for r in await db.fetchall("SELECT id, size FROM things ORDER BY id")] == [("a", 1), ("b", 2)]
    assert [r[0] for r in await db.fetchall("SELECT what FROM events")] == ["made"]

    async def bump() -> None:
        async with db.transaction() as tx:
            size = (await tx.fetchone("SELECT size FROM things WHERE id = 'a'"))[0]
            await asyncio.sleep(0)  # a write in between would be lost by this update
            await tx.execute("UPDATE things SET size = ? WHERE id = 'a'", (size + 1,))

    await asyncio.gather(bump(), db.write([(insert, [("d", 5)])]), bump())
    assert [tuple(r) for r in await db.fetchall("SELECT id, size FROM things ORDER BY id")] == [
        ("a", 3),
        ("b", 2),
        ("d", 5),
    ]


async def test_upsert_and_conflicts(db: Database) -> None:
    sql = upsert("things", ["id", "size", "note"], ["id"])
    await db.execute(sql, ("x", 1, "first"))
    await db.execute(sql, ("x", 5, "second"))
    assert tuple(await db.fetchone("SELECT size, note FROM things WHERE id = 'x'")) == (5, "second")
    assert await db.execute("INSERT INTO things (id) VALUES (?) ON CONFLICT DO NOTHING", ("x",)) == 0
    with pytest.raises(DatabaseError):  # the partial unique index
        await db.execute("INSERT INTO things (id, note) VALUES (?, ?)", ("y", "second"))
    with pytest.raises(DatabaseError):
        await db.fetchall("SELECT * FROM no_such_table")
    with pytest.raises(DatabaseError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO things (id) VALUES (?)", ("z",))
            await tx.execute("INSERT INTO things (id) VALUES (?)", ("z",))
    assert await db.fetchone("SELECT 1 FROM things WHERE id = 'z'") is None  # the whole transaction went
    await db.execute("INSERT INTO events (what) VALUES (?)", ("made",))  # still usable; ids assigned
    await db.execute("INSERT INTO events (what) VALUES (?)", ("again",))
    assert [r[0] for r in await db.fetchall("SELECT seq FROM events ORDER BY seq")] == [1, 2]


async def test_concurrent_read_modify_writes_are_serialised(db: Database) -> None:
    await db.execute("INSERT INTO counter (name, value) VALUES ('n', 0)")

    async def bump() -> None:
        async with db.transaction() as tx:
            value = (await tx.fetchone("SELECT value FROM counter WHERE name = 'n'"))[0]
            await asyncio.sleep(0)  # let the others try to interleave
            await tx.execute("UPDATE counter SET value = ? WHERE name = 'n'", (value + 1,))

    await asyncio.gather(*(bump() for _ in range(50)))
    assert (await db.fetchone("SELECT value FROM counter"))[0] == 50


async def test_migrations_run_once_and_refuse_a_newer_schema(location: str | Path, migrations: str) -> None:
    first = await open_database(location, migrations, "test")
    await first.execute("INSERT INTO counter VALUES ('kept', 7)")
    await first.close()
    package = Path(sys.modules[migrations].__file__ or "").parent
    (package / "0003_more.sql").write_text("ALTER TABLE counter ADD COLUMN label TEXT NOT NULL DEFAULT '';")
    second = await open_database(location, migrations, "test")
    assert tuple(await second.fetchone("SELECT value, label FROM counter")) == (7, "")
    await second.close()
    (package / "0003_more.sql").unlink()
    with pytest.raises(MigrationError, match="newer"):
        await open_database(location, migrations, "test")


def test_postgres_spellings() -> None:
    assert placeholders("SELECT ? , '?', \"a?\" -- ?\n, ?") == "SELECT $1 , '?', \"a?\" -- ?\n, $2"
    assert placeholders("SELECT 'it''s ?', ?") == "SELECT 'it''s ?', $1"
    assert ddl("x INTEGER PRIMARY KEY AUTOINCREMENT, y REAL, z integer") == (
        "x BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, y DOUBLE PRECISION, z BIGINT"
    )


async def test_a_failing_block_among_concurrent_ones_undoes_only_its_own_work(db: Database) -> None:
    """Concurrent transactions may share one commit (PostgreSQL's group commit): a block that fails after writing
    takes back its own rows, and every other block's rows are committed when its transaction() returns."""

    async def block(index: int) -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO things (id, size) VALUES (?, ?)", (f"t{index}", index))
            await asyncio.sleep(0)
            if index % 5 == 0:
                raise ValueError(index)
            await tx.execute("UPDATE things SET note = ? WHERE id = ?", (f"n{index}", f"t{index}"))
        assert await db.fetchone("SELECT 1 FROM things WHERE id = ?", (f"t{index}",)) is not None

    outcomes = await asyncio.gather(*(block(i) for i in range(1, 31)), return_exceptions=True)
    assert [i for i, o in enumerate(outcomes, 1) if isinstance(o, ValueError)] == [5, 10, 15, 20, 25, 30]
    assert all(o is None for i, o in enumerate(outcomes, 1) if i % 5)
    rows = await db.fetchall("SELECT id, note FROM things ORDER BY size")
    assert [tuple(r) for r in rows] == [(f"t{i}", f"n{i}") for i in range(1, 31) if i % 5]


async def test_a_block_that_swallows_a_refused_statement_is_rolled_back_whole(postgres, migrations: str) -> None:
    """PostgreSQL refuses the rest of a transaction after a failed statement (SQLite would go on): when a block
    catches the error and goes on, nothing of that block is kept and its caller is told."""
    db = await open_database(postgres.create_database("layer"), migrations, "test")
    try:
        await db.execute("INSERT INTO things (id) VALUES ('kept')")
        with pytest.raises(DatabaseError, match="rolled back"):
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO things (id) VALUES ('lost')")
                with contextlib.suppress(DatabaseError):
                    await tx.execute("INSERT INTO things (id) VALUES ('kept')")  # duplicate key
        assert [r[0] for r in await db.fetchall("SELECT id FROM things")] == ["kept"]
        assert await db.execute("INSERT INTO things (id) VALUES ('next')") == 1  # the session is usable again
    finally:
        await db.close()
