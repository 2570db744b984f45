"""The shared backend: several Walrus front ends serving one object store, metadata in PostgreSQL (shared_db.py),
object data in a Ceph pool (rados_data.py), so that any front end can take any request.

Why PostgreSQL and not RADOS omap for the metadata: a write is a transaction over several records (the key's
versions, the bucket's counters and quota, an upload and its parts) whose checks must hold against every other
front end's writes, and listings are ordered range scans with prefixes; PostgreSQL gives both (and the same SQL
as the embedded backend's SQLite, so the two run one set of transactions), where omap offers single-object
atomic updates only. The cloud's scale-out layout runs PostgreSQL for the CLC anyway.

What changes from the embedded backend, and why:
- Object metadata is never cached: a PUT acknowledged by one front end must be what the next GET through another
  one sees, so every read of a key asks the database (one query from the read pool). Small bodies are cached by
  data id, which names immutable bytes, so that cache needs no invalidation.
- Bucket settings (ACL, versioning, configurations: asked on every request) are cached, and dropped when the
  database notifies a change (triggers in shared_db.py, delivered at COMMIT). Until the notification arrives
  (milliseconds) another front end may apply the previous settings, as S3 itself documents for bucket
  configuration. While the notification session is down nothing is cached.
- Change hooks (the bundled-image cache of each front end) hear the other front ends' changes too, as events of
  kind "remote" carrying bucket and key: each front end's image cache drops images built from a bundle changed
  anywhere.
- Data is removed `removal_delay` seconds after its last row goes (readers on other front ends cannot be
  counted), and the start-up sweep spares unnamed data younger than `sweep_min_age` (another front end may be
  about to commit it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import asyncpg

from common.database.postgres import connect
from services.walrus.storage.base import BucketInfo, ChangeEvent, ObjectInfo, log
from services.walrus.storage.embedded import META_CACHE_ENTRIES, EmbeddedBackend
from services.walrus.storage.group_commit import GroupCommit
from services.walrus.storage.rados_data import RadosBlobs
from services.walrus.storage.rows import OBJECT_COLUMNS, object_from_row
from services.walrus.storage.shared_db import CHANNEL, SharedMetadataDb

REMOVAL_DELAY = 300.0
SWEEP_MIN_AGE = 3600.0
RELISTEN_SECONDS = 2.0
CURRENT_VERSION = f"SELECT {OBJECT_COLUMNS} FROM versions WHERE bucket = ? AND key = ? ORDER BY ordinal LIMIT 1"


class SharedBackend(EmbeddedBackend):
    def __init__(self, root: Path, url: str, blobs: RadosBlobs, removal_delay: float = REMOVAL_DELAY):
        blobs.sweep_min_age = max(blobs.sweep_min_age, SWEEP_MIN_AGE)
        super().__init__(root, blobs=blobs)
        self.data.removal_delay = removal_delay
        self.shared_db = SharedMetadataDb(url)
        self.db = self.shared_db
        self._commits = GroupCommit(self.shared_db)
        self.url = url
        self._listener: asyncpg.Connection | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._generation = 0  # bumped by every bucket notification: a read that spans one does not cache what it read
        self._pending: set[asyncio.Task[None]] = set()
        self._decoded: dict[tuple[str, str], tuple[tuple[Any, ...], ObjectInfo]] = {}  # key -> (row, its decoding)

    # --- life cycle ---
    async def start(self) -> None:
        await self._listen()  # before anything is cached
        await super().start()
        self._listen_task = asyncio.get_running_loop().create_task(self._keep_listening())

    async def close(self) -> None:
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listen_task
        await self._unlisten()
        await super().close()

    async def _listen(self) -> None:
        conn = await connect(self.url)
        await conn.add_listener(CHANNEL, self._on_notification)
        self._listener = conn
        self._forget_all()  # whatever was cached before may have missed changes

    async def _unlisten(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await conn.close()

    async def _keep_listening(self) -> None:
        """Listen again when the notification session breaks (caches are off meanwhile)."""
        while True:
            await asyncio.sleep(RELISTEN_SECONDS)
            if self._listener is not None and not self._listener.is_closed():
                continue
            self._listener = None
            self._forget_all()
            try:
                await self._listen()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                log.warning("metadata notifications unavailable (caches off): %s", err)

    @property
    def _caching(self) -> bool:
        return self._listener is not None and not self._listener.is_closed()

    def _forget_all(self) -> None:
        self._generation += 1
        self._buckets.clear()
        self._configs.clear()

    # --- notifications from the database ---
    def _on_notification(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            change = json.loads(payload)
        except ValueError:
            return
        if change[0] == "b":
            self._generation += 1
            self._buckets.pop(change[1], None)
            for cached in [k for k in self._configs if k[0] == change[1]]:
                del self._configs[cached]
        elif change[0] == "v" and pid != self.shared_db.writer_pid:  # our own changes told the hooks already
            task = asyncio.get_running_loop().create_task(
                self._notify(ChangeEvent("remote", change[1], change[2], None))
            )
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    # --- caches: object metadata never, bucket settings while notifications flow ---
    def _cache_object(self, info: Any) -> None:
        return None

    async def get_version(self, bucket: str, key: str, version_id: str | None = None) -> ObjectInfo | None:
        """Always from the database; a row equal to the one read last time for the key gives back the same
        ObjectInfo without decoding it again (its JSON columns cost as much as the query)."""
        if version_id is not None:
            return await super().get_version(bucket, key, version_id)
        rows = await self.db.query(CURRENT_VERSION, (bucket, key))
        if not rows:
            return None
        row = tuple(rows[0])
        decoded = self._decoded.get((bucket, key))
        if decoded is not None and decoded[0] == row:
            return decoded[1]
        info = object_from_row(row)
        if len(self._decoded) >= META_CACHE_ENTRIES:
            self._decoded.clear()
        self._decoded[(bucket, key)] = (row, info)
        return info

    async def get_bucket(self, name: str) -> BucketInfo | None:
        if not self._caching:
            self._buckets.pop(name, None)
        generation = self._generation
        info = await super().get_bucket(name)
        if generation != self._generation:  # a change was notified while we read: do not keep what we read
            self._buckets.pop(name, None)
        return info

    async def get_bucket_config(self, bucket: str, kind: str) -> str | None:
        if not self._caching:
            self._configs.pop((bucket, kind), None)
        generation = self._generation
        document = await super().get_bucket_config(bucket, kind)
        if generation != self._generation:
            self._configs.pop((bucket, kind), None)
        return document
