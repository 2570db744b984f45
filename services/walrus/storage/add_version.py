"""The transaction that commits one new object version (a PUT or a copy), and the way a run of them commits
together when they are all new keys: what a burst of small PUTs is.

Alone, a version costs five statements (the bucket's row, the key's current version, the inline bytes, the
version, the bucket's counters), each a trip out of the interpreter lock and back on the database thread. A run of
new keys in one bucket costs one statement per table (executemany) plus two reads, whatever its length, with the
same rows written and the same results given as running them one after the other: with no version of any of the
keys yet, each one's only effects are its own rows and its share of the bucket's counters. Anything else (a key
that has versions, the same key twice, two buckets, a quota to check) is committed one by one, as before.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from services.walrus.storage.base import ObjectInfo
from services.walrus.storage.rows import INSERT_VERSION, new_version_id, object_values

# (the version as stored, the version it replaced as current, versions removed)
Added = tuple[ObjectInfo, ObjectInfo | None, list[ObjectInfo]]
AddOne = Callable[[sqlite3.Connection, ObjectInfo, tuple[int, int], dict[str, bytes] | None], Added]


def add_new_keys(conn: sqlite3.Connection, run: list[AddVersion]) -> list[Added] | None:
    """On the database thread, inside the batch's transaction: the run committed together, or None (nothing
    written) when it is not a run of new keys of one bucket without quotas."""
    bucket = run[0].info.bucket
    keys = {add.info.key for add in run}
    if len(keys) != len(run) or any(add.info.bucket != bucket or add.quota != (0, 0) for add in run):
        return None
    row = conn.execute("SELECT versioning FROM buckets WHERE name = ?", (bucket,)).fetchone()
    if row is None:  # one by one, each answers NoSuchBucket
        return None
    marks = ", ".join("?" * len(keys))
    known = conn.execute(f"SELECT 1 FROM versions WHERE bucket = ? AND key IN ({marks}) LIMIT 1", (bucket, *keys))
    if known.fetchone() is not None:
        return None
    versioned = row[0] == "Enabled"
    stored = [
        dataclasses.replace(add.info, version_id=new_version_id() if versioned else "null", is_latest=True)
        for add in run
    ]
    inline = [(data_id, body) for add in run if add.inline for data_id, body in add.inline.items()]
    if inline:
        conn.executemany("INSERT INTO inline_data (data_id, bytes) VALUES (?, ?)", inline)
    conn.executemany(INSERT_VERSION, [object_values(info, 0) for info in stored])  # a key's first: ordinal 0
    conn.execute(
        "UPDATE buckets SET bytes_used = bytes_used + ?, object_count = object_count + ? WHERE name = ?",
        (sum(info.size for info in stored), sum(not info.delete_marker for info in stored), bucket),
    )
    return [(info, None, []) for info in stored]


@dataclass(frozen=True, slots=True)
class AddVersion:
    """One version to commit: `one` (the backend's single-version transaction) when called alone; the group commit
    offers a run of them to `together` first (group_commit.py)."""

    info: ObjectInfo
    quota: tuple[int, int]
    inline: dict[str, bytes] | None
    one: AddOne

    together = staticmethod(add_new_keys)

    def __call__(self, conn: sqlite3.Connection) -> Added:
        return self.one(conn, self.info, self.quota, self.inline)
