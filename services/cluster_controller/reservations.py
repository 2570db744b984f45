"""What a zone keeps of its reservations, node zones (cc.db) and remote zones (remote.db) alike: each reservation's
launch spec, written in the transaction that records its instances and read again (cached) whenever an instance
must be sent to its node or cloud again; and the forgetting of instances ended long ago.

Both databases have the same `reservations(reservation_id, spec, created_at)` table and an `instances` table keyed
by `instance_id` with a `reservation_id` column.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import MutableMapping
from typing import Protocol, TypeVar

import aiosqlite

from common.db import Statement, write_together
from common.messages.cc_nc import LaunchSpec


class Reservations:
    def __init__(self, db: aiosqlite.Connection):
        self.db = db
        self._specs: dict[str, LaunchSpec] = {}

    async def add(self, reservation_id: str, spec: LaunchSpec, instances: Statement) -> None:
        """One transaction (one hop to the database thread): the spec and the reservation's placed instances
        (`instances`: their upsert and rows)."""
        reservation = (
            "INSERT INTO reservations(reservation_id, spec, created_at) VALUES (?, ?, ?)"
            " ON CONFLICT(reservation_id) DO NOTHING",
            [(reservation_id, spec.model_dump_json(), time.time())],
        )
        await write_together(self.db, [reservation, instances])
        self._specs[reservation_id] = spec

    async def spec(self, reservation_id: str) -> LaunchSpec | None:
        spec = self._specs.get(reservation_id)
        if spec is None:
            async with self.db.execute(
                "SELECT spec FROM reservations WHERE reservation_id = ?", (reservation_id,)
            ) as cursor:
                row = await cursor.fetchone()
            if row is not None:
                spec = self._specs[reservation_id] = LaunchSpec.model_validate_json(row["spec"])
        return spec

    async def forget(self, instance_ids: list[str]) -> None:
        """Drop instances ended long ago, and the reservations with no instance left."""
        if not instance_ids:
            return
        await self.db.executemany("DELETE FROM instances WHERE instance_id = ?", [(i,) for i in instance_ids])
        await self.db.execute(
            "DELETE FROM reservations WHERE reservation_id NOT IN (SELECT DISTINCT reservation_id FROM instances)"
        )
        await self.db.commit()
        self._specs.clear()  # cheap to read again; keeps the cache to the reservations still running


class Ending(Protocol):
    """What the purge reads of an instance (the node zone's and the remote zone's both)."""

    @property
    def live(self) -> bool: ...

    @property
    def ended_at(self) -> float: ...


E = TypeVar("E", bound=Ending)


async def purge_ended(instances: MutableMapping[str, E], retention: float, reservations: Reservations) -> None:
    """For as long as the zone runs: instances ended more than `retention` seconds ago are forgotten, in memory
    and in the database (DescribeInstances shows an ended instance for that long, as EC2 does)."""
    while True:
        await asyncio.sleep(min(60.0, retention / 2))
        limit = time.time() - retention
        old = [key for key, i in instances.items() if not i.live and i.ended_at < limit]
        for key in old:
            del instances[key]
        await reservations.forget(old)
