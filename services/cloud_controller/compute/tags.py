"""The tag store: the `tags` table (resource_id, key, value, owner_id, resource_type); a resource's tags belong to
its owner account.

A resource type becomes taggable when its part registers its id prefix with a function saying which of some ids
an account owns (`tags.register("vol", "volume", owned_volumes, "InvalidVolume.NotFound")`); the compute engine
registers instances, images, security groups and key pairs, the EBS engine volumes and snapshots.
Tag parameters are validated by the actions (`actions/tags.py`); this store takes (key, value) pairs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from common.database import DatabaseError, Row, Transaction
from services.cloud_controller.compute.errors import ComputeError
from services.cloud_controller.database import Database
from services.cloud_controller.ec2.filters import matches

MAX_TAGS_PER_RESOURCE = 50
CHUNK = 500  # ids per statement: SQLite's parameter limit

Owned = Callable[[str, list[str]], Awaitable[set[str]]]  # (owner id, ids) -> those ids the account owns


@dataclass(frozen=True)
class ResourceType:
    prefix: str
    name: str  # EC2's resource-type value: instance, image, security-group, key-pair, volume, snapshot
    owned: Owned
    not_found: str  # the error code for an id that does not exist (or is not the caller's)


class Tags:
    def __init__(self, db: Database):
        self.db = db
        self.types: dict[str, ResourceType] = {}
        # Every resource that may have tags (a superset: an id joins before its first tag is written and leaves
        # only when the resource is forgotten), from `load`. Answers about untagged resources (most instances)
        # then need no database read, which a busy writer would otherwise queue behind its transactions.
        self._tagged: set[str] | None = None

    async def load(self) -> None:
        self._tagged = {row[0] for row in await self.db.fetchall("SELECT DISTINCT resource_id FROM tags")}

    def register(self, prefix: str, name: str, owned: Owned, not_found: str) -> None:
        self.types[prefix] = ResourceType(prefix, name, owned, not_found)

    def resource_type(self, resource_id: str) -> ResourceType | None:
        prefix, sep, _ = resource_id.partition("-")
        return self.types.get(prefix.lower()) if sep else None

    def owned_in(self, table: str, id_column: str, extra: str = "") -> Owned:
        """An ownership check over a part's table (instances, images): ids in `table` owned by the account."""

        async def owned(owner_id: str, ids: list[str]) -> set[str]:
            marks = ",".join("?" * len(ids))
            try:
                rows = await self.db.fetchall(
                    f"SELECT {id_column} FROM {table} WHERE owner_id = ? AND {id_column} IN ({marks}){extra}",
                    (owner_id, *[i.lower() for i in ids]),
                )
            except DatabaseError:  # the table is not there (yet)
                return set()
            found = {row[0] for row in rows}
            return {i for i in ids if i.lower() in found}

        return owned

    async def check_owned(self, owner_id: str, by_type: dict[str, list[str]]) -> None:
        """Every id (grouped by registered prefix) is the account's; else the type's NotFound error."""
        for prefix, ids in by_type.items():
            kind = self.types[prefix]
            owned = await kind.owned(owner_id, ids)
            missing = [rid for rid in ids if rid not in owned]
            if missing:
                raise ComputeError(kind.not_found, f"The {kind.name} ID '{missing[0][:64]}' does not exist")

    # --- reads -------------------------------------------------------------------------------------------
    async def tags_for(self, resource_ids: Iterable[str]) -> dict[str, list[dict[str, str]]]:
        """{resource_id: [{"Key": k, "Value": v}, ...]}, the `Tags` member of answers."""
        ids = self.maybe_tagged(list(dict.fromkeys(resource_ids)))
        found: dict[str, list[dict[str, str]]] = {}
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            rows = await self.db.fetchall(
                f"SELECT resource_id, key, value FROM tags WHERE resource_id IN ({','.join('?' * len(chunk))})"
                " ORDER BY resource_id, key",
                chunk,
            )
            for row in rows:
                found.setdefault(row["resource_id"], []).append({"Key": row["key"], "Value": row["value"]})
        return found

    def maybe_tagged(self, resource_ids: list[str]) -> list[str]:
        """Those of the ids that may have tags (all of them before `load`); the others have none."""
        tagged = self._tagged
        return resource_ids if tagged is None else [i for i in resource_ids if i in tagged]

    async def ids_matching(self, owner_id: str, tag_filters: dict[str, list[str]]) -> set[str] | None:
        """Ids of the account's resources matching every `tag:KEY`, `tag-key` and `tag-value` filter; None when
        there are no tag filters (intersect with a describe's ids)."""
        if not tag_filters:
            return None
        rows = await self.db.fetchall("SELECT resource_id, key, value FROM tags WHERE owner_id = ?", (owner_id,))
        by_resource: dict[str, dict[str, str]] = {}
        for row in rows:
            by_resource.setdefault(row["resource_id"], {})[row["key"]] = row["value"]
        return {rid for rid, tagset in by_resource.items() if _tags_match(tagset, tag_filters)}

    async def after(self, owner_id: str, resource_id: str, key: str) -> list[Row]:
        """The account's tags after (resource_id, key), in that order (DescribeTags' pages)."""
        return await self.db.fetchall(
            "SELECT resource_id, key, value, resource_type FROM tags WHERE owner_id = ? AND (resource_id, key) > (?, ?)"
            " ORDER BY resource_id, key",
            (owner_id, resource_id, key),
        )

    # --- writes ------------------------------------------------------------------------------------------
    async def put(self, owner_id: str, resources: list[tuple[str, str]], pairs: list[tuple[str, Any]]) -> None:
        """Set (key, value) pairs on (id, type) resources the caller has checked (e.g. just created), in a
        transaction of its own."""
        if pairs and resources:
            async with self.db.transaction() as conn:
                await self.put_in(conn, owner_id, resources, pairs)

    async def insert_named(
        self,
        table: str,
        id_column: str,
        row: dict[str, Any],
        resource_type: str,
        pairs: list[tuple[str, Any]],
        duplicate: ComputeError,
    ) -> None:
        """A part's new named resource and its tags in one transaction: `row` (with `id_column`, owner_id and name)
        into `table`, unless the account has a resource of that name there already (`duplicate` is raised then)."""
        owner_id, name = row["owner_id"], row["name"]
        async with self.db.transaction() as conn:
            sql = f"SELECT 1 FROM {table} WHERE owner_id = ? AND name = ?"
            async with conn.execute(sql, (owner_id, name)) as cursor:
                if await cursor.fetchone():
                    raise duplicate
            marks = ", ".join("?" * len(row))
            await conn.execute(f"INSERT INTO {table}({', '.join(row)}) VALUES ({marks})", tuple(row.values()))
            if pairs:
                await self.put_in(conn, owner_id, [(row[id_column], resource_type)], pairs)

    async def put_in(
        self, conn: Transaction, owner_id: str, resources: list[tuple[str, str]], pairs: list[tuple[str, Any]]
    ) -> None:
        """Inside an open transaction (`conn` from `db.transaction()`): set (key, value) pairs on (id, type)."""
        for rid, type_name in resources:
            if self._tagged is not None:
                self._tagged.add(rid)  # before the write: the set may only ever hold more than the table
            await conn.executemany(
                "INSERT INTO tags(resource_id, key, value, owner_id, resource_type) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(resource_id, key) DO UPDATE SET value = excluded.value",
                [(rid, key, value or "", owner_id, type_name) for key, value in pairs],
            )
            async with conn.execute("SELECT COUNT(*) FROM tags WHERE resource_id = ?", (rid,)) as cursor:
                row = await cursor.fetchone()
            if row is not None and row[0] > MAX_TAGS_PER_RESOURCE:
                raise ComputeError(
                    "TagLimitExceeded", f"The maximum number of tags per resource is {MAX_TAGS_PER_RESOURCE}"
                )

    async def delete(self, owner_id: str, resource_ids: list[str], pairs: list[tuple[str, str | None]]) -> None:
        """Remove the account's tags: all of them without pairs, else each key (any value when None) or key=value."""
        async with self.db.transaction() as conn:
            for rid in resource_ids:
                if not pairs:
                    await conn.execute("DELETE FROM tags WHERE resource_id = ? AND owner_id = ?", (rid, owner_id))
                for key, value in pairs:
                    if value is None:
                        await conn.execute(
                            "DELETE FROM tags WHERE resource_id = ? AND owner_id = ? AND key = ?", (rid, owner_id, key)
                        )
                    else:
                        await conn.execute(
                            "DELETE FROM tags WHERE resource_id = ? AND owner_id = ? AND key = ? AND value = ?",
                            (rid, owner_id, key, value),
                        )

    async def forget(self, resource_ids: Iterable[str]) -> None:
        """Resources deleted for good: their tags go too."""
        ids = list(resource_ids)
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            if self._tagged is not None:  # before the delete: a tag written meanwhile puts its id back
                self._tagged.difference_update(chunk)
            await self.db.execute(f"DELETE FROM tags WHERE resource_id IN ({','.join('?' * len(chunk))})", chunk)


def _tags_match(tagset: dict[str, str], tag_filters: dict[str, list[str]]) -> bool:
    for name, values in tag_filters.items():
        if name == "tag-key":
            ok = any(matches(key, values) for key in tagset)
        elif name == "tag-value":
            ok = any(matches(value, values) for value in tagset.values())
        else:
            key = name[len("tag:") :]
            ok = key in tagset and matches(tagset[key], values)
        if not ok:
            return False
    return True
