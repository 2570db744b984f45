"""Pick the engine from where the database is: a `postgresql://` URL, or a SQLite file path."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from common.database.base import Database

if TYPE_CHECKING:
    from common.database.leadership import Leadership


def is_postgres_url(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


async def open_database(
    location: str | Path, migrations: str | None, component: str, leadership: Leadership | None = None
) -> Database:
    """Open `component`'s database at `location` and bring its schema (`migrations` package) up to date.
    With a `leadership`, writes go through its session (PostgreSQL only: SQLite has one process anyway)."""
    if is_postgres_url(location):
        from common.database.postgres import PostgresDatabase

        assert isinstance(location, str)
        if leadership is not None:
            return await PostgresDatabase.open(location, migrations, component, leadership.writer)
        return await PostgresDatabase.open(location, migrations, component)
    from common.database.sqlite import SqliteDatabase

    return await SqliteDatabase.open(Path(location), migrations)
