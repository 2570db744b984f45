"""The Cloud Controller's database: `clc.db` in the state directory (SQLite, the default) or, with
KOALA_DATABASE_URL=postgresql://..., a PostgreSQL database shared with a standby CLC (`standby.py`). Either way
through `common.database`: the same SQL, the same migrations (`migrations/`), the same `Database` interface.

Statements that must be atomic (read-modify-write, several statements) go through `transaction()`, which
serialises writers inside the process:

    async with clc.db.transaction() as conn:
        await conn.execute("UPDATE ...", (...,))
        await conn.execute("INSERT ...", (...,))

Reads use `fetchall`/`fetchone`; decisions that must be exact are made inside `transaction()`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from common.database import Database, open_database

if TYPE_CHECKING:
    from common.database.leadership import Leadership

MIGRATIONS = "services.cloud_controller.migrations"
FILE_NAME = "clc.db"
COMPONENT = "clc"

__all__ = ["Database", "open_clc_database"]


async def open_clc_database(state_dir: Path, url: str = "", leadership: Leadership | None = None) -> Database:
    """The CLC's database: at `url` if one is configured, else `clc.db` in `state_dir`."""
    return await open_database(url or state_dir / FILE_NAME, MIGRATIONS, COMPONENT, leadership)
