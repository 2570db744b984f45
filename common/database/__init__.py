"""One SQL database layer, two engines: SQLite (embedded, the default) and PostgreSQL (distributed, when a
`postgresql://` URL is configured).

Code above this layer writes SQL once, in the subset both engines understand (see `portable.py`): `?`
placeholders, `INSERT ... ON CONFLICT`, no engine-specific functions. Migrations are written once too, with
SQLite's type names; the PostgreSQL engine maps them to its own (`INTEGER` -> `BIGINT`, `REAL` -> `DOUBLE
PRECISION`) in one place. Both engines offer the same `Database`:

    rows = await db.fetchall("SELECT ... WHERE owner_id = ?", (owner,))
    async with db.transaction() as tx:          # serialised, atomic
        cursor = await tx.execute("UPDATE ...", (...,))
        if cursor.rowcount == 0: ...

`open_database(url_or_path, migrations)` picks the engine from the location it is given.
"""

from common.database.base import Cursor, Database, DatabaseError, Row, Transaction
from common.database.open import is_postgres_url, open_database
from common.database.portable import upsert

__all__ = [
    "Cursor",
    "Database",
    "DatabaseError",
    "Row",
    "Transaction",
    "is_postgres_url",
    "open_database",
    "upsert",
]
