"""Volumes and snapshots in memory (checks and updates are synchronous on the event loop) and written through to
the CLC's database (migrations/0004_ebs.sql) before anything is sent to a CC."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from common.database import upsert

if TYPE_CHECKING:
    from services.cloud_controller.database import Database


@dataclass(slots=True)
class Volume:
    volume_id: str
    owner_id: str
    zone: str
    size_gb: int
    state: str
    create_time: float
    updated_at: float
    snapshot_id: str = ""
    volume_type: str = "standard"
    client_token: str = ""
    instance_id: str = ""
    device: str = ""
    attach_state: str = ""  # attaching, attached, detaching ('' when not attached)
    attach_time: float = 0.0
    delete_on_termination: bool = False
    detail: str = ""
    boot: bool = False  # the instance boots with it (root or launch mapping): exported by the CC at each start


@dataclass(slots=True)
class Snapshot:
    snapshot_id: str
    owner_id: str
    volume_id: str
    volume_size: int
    zone: str
    state: str  # pending, completed, error, deleting
    start_time: float
    updated_at: float
    progress: int = 0
    description: str = ""
    detail: str = ""
    public: bool = False
    permissions: set[str] = field(default_factory=set)

    def restorable_by(self, account_id: str) -> bool:
        return self.owner_id == account_id or self.public or account_id in self.permissions


_VOLUME_COLUMNS = [f.name for f in fields(Volume)]
_SNAPSHOT_COLUMNS = [f.name for f in fields(Snapshot) if f.name != "permissions"]


class EbsStore:
    def __init__(self, db: Database):
        self.db = db
        self.volumes: dict[str, Volume] = {}
        self.snapshots: dict[str, Snapshot] = {}
        self.tokens: dict[tuple[str, str], str] = {}  # (owner, ClientToken) -> volume id
        self.version = 0  # counts volume writes: indexes built over the volumes know when they are stale

    async def load(self) -> None:
        for row in await self.db.fetchall(f"SELECT {', '.join(_VOLUME_COLUMNS)} FROM volumes"):
            values = dict(row)
            values["delete_on_termination"] = bool(values["delete_on_termination"])
            values["boot"] = bool(values["boot"])
            volume = Volume(**values)
            self.volumes[volume.volume_id] = volume
            if volume.client_token:
                self.tokens[(volume.owner_id, volume.client_token)] = volume.volume_id
        for row in await self.db.fetchall(f"SELECT {', '.join(_SNAPSHOT_COLUMNS)} FROM snapshots"):
            values = dict(row)
            values["public"] = bool(values["public"])
            self.snapshots[values["snapshot_id"]] = Snapshot(**values)
        for row in await self.db.fetchall("SELECT snapshot_id, account_id FROM snapshot_permissions"):
            if row[0] in self.snapshots:
                self.snapshots[row[0]].permissions.add(row[1])

    async def save_volume(self, volume: Volume) -> None:
        volume.updated_at = time.time()
        self.version += 1
        await self.db.execute(
            upsert("volumes", _VOLUME_COLUMNS, ["volume_id"]),
            [getattr(volume, c) for c in _VOLUME_COLUMNS],
        )

    async def forget_volume(self, volume: Volume) -> None:
        self.volumes.pop(volume.volume_id, None)
        self.tokens.pop((volume.owner_id, volume.client_token), None)
        self.version += 1
        await self.db.execute("DELETE FROM volumes WHERE volume_id = ?", (volume.volume_id,))

    async def save_snapshot(self, snapshot: Snapshot, permissions: bool = False) -> None:
        snapshot.updated_at = time.time()
        async with self.db.transaction() as conn:
            await conn.execute(
                upsert("snapshots", _SNAPSHOT_COLUMNS, ["snapshot_id"]),
                [getattr(snapshot, c) for c in _SNAPSHOT_COLUMNS],
            )
            if permissions:
                await conn.execute("DELETE FROM snapshot_permissions WHERE snapshot_id = ?", (snapshot.snapshot_id,))
                await conn.executemany(
                    "INSERT INTO snapshot_permissions(snapshot_id, account_id) VALUES (?, ?)",
                    [(snapshot.snapshot_id, a) for a in sorted(snapshot.permissions)],
                )

    async def forget_snapshot(self, snapshot: Snapshot) -> None:
        self.snapshots.pop(snapshot.snapshot_id, None)
        async with self.db.transaction() as conn:
            await conn.execute("DELETE FROM snapshots WHERE snapshot_id = ?", (snapshot.snapshot_id,))
            await conn.execute("DELETE FROM snapshot_permissions WHERE snapshot_id = ?", (snapshot.snapshot_id,))
