"""The CC's block-storage records in their own SQLite database (storage.db in the CC's state directory)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import aiosqlite

from common.db import open_db


@dataclass
class Volume:
    volume_id: str
    size_gb: int
    state: str  # creating, available, deleting, error
    tid: int
    snapshot_id: str = ""
    detail: str = ""
    created_at: float = field(default_factory=time.time)


@dataclass
class Attachment:
    volume_id: str
    instance_id: str
    node_url: str
    device: str
    initiator: str
    state: str  # attaching, attached, detaching
    detail: str = ""
    updated_at: float = field(default_factory=time.time)
    move_node_url: str = ""  # while the instance migrates: the target node, and the initiator it logs in with
    move_initiator: str = ""


@dataclass
class Snapshot:
    snapshot_id: str
    volume_id: str
    size_gb: int
    state: str  # pending, completed, error, deleting
    progress: int = 0
    stored_bytes: int = 0
    parent: str = ""
    chunks: list[str] = field(default_factory=list)
    detail: str = ""
    created_at: float = field(default_factory=time.time)


def _columns(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


class StorageStore:
    def __init__(self, db: aiosqlite.Connection):
        self.db = db
        self.lock = asyncio.Lock()  # one write (statements + commit) at a time

    @classmethod
    async def open(cls, path: Path) -> StorageStore:
        return cls(await open_db(path, "services.cluster_controller.storage.migrations"))

    async def close(self) -> None:
        await self.db.close()

    async def load(self) -> tuple[dict[str, Volume], dict[str, Attachment], dict[str, Snapshot]]:
        volumes, attachments, snapshots = {}, {}, {}
        async with self.db.execute(f"SELECT {', '.join(_columns(Volume))} FROM volumes") as cursor:
            async for row in cursor:
                volumes[row["volume_id"]] = Volume(**dict(row))
        async with self.db.execute(f"SELECT {', '.join(_columns(Attachment))} FROM attachments") as cursor:
            async for row in cursor:
                attachments[row["volume_id"]] = Attachment(**dict(row))
        async with self.db.execute(f"SELECT {', '.join(_columns(Snapshot))} FROM snapshots") as cursor:
            async for row in cursor:
                values = dict(row)
                values["chunks"] = json.loads(values["chunks"])
                snapshots[row["snapshot_id"]] = Snapshot(**values)
        return volumes, attachments, snapshots

    async def _upsert(self, table: str, record: object) -> None:
        names = _columns(type(record))
        values = [getattr(record, n) for n in names]
        values = [json.dumps(v) if isinstance(v, list) else v for v in values]
        async with self.lock:
            await self.db.execute(
                f"INSERT OR REPLACE INTO {table}({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", values
            )
            await self.db.commit()

    async def _delete(self, table: str, key: str, value: str) -> None:
        async with self.lock:
            await self.db.execute(f"DELETE FROM {table} WHERE {key} = ?", (value,))
            await self.db.commit()

    async def save_volume(self, volume: Volume) -> None:
        await self._upsert("volumes", volume)

    async def delete_volume(self, volume_id: str) -> None:
        await self._delete("volumes", "volume_id", volume_id)

    async def save_attachment(self, attachment: Attachment) -> None:
        attachment.updated_at = time.time()
        await self._upsert("attachments", attachment)

    async def delete_attachment(self, volume_id: str) -> None:
        await self._delete("attachments", "volume_id", volume_id)

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        await self._upsert("snapshots", snapshot)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await self._delete("snapshots", "snapshot_id", snapshot_id)
