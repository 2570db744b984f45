"""The embedded backend: data files on the local disk, metadata in aiosqlite.

Write path: bytes go to a new file `data/xx/<id>` under a fresh random id (hashed on the way), the file and its
directory are fsynced, and only then does one SQLite transaction (synchronous=FULL, group-committed with the
writes that queued meanwhile) make it a version of the key (table `versions`: a key's versions newest first).
Until that commit no row names the file, so nobody can see it. A version's data is unlinked once its row is gone
(a `null` version replaced, a version deleted), or later when the last reader that opened it closes it. A crash
at any point leaves either the old or the new object; leftovers (files no row points at: uploads cut short,
data whose unlink did not happen) are removed at start-up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import shutil
import sqlite3
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from common.db import open_db
from services.walrus.storage import files
from services.walrus.storage.base import (
    Acl,
    BucketExists,
    BucketInfo,
    BucketNotEmpty,
    ChangeEvent,
    DefaultRetention,
    DeleteMarkerHit,
    DeleteOutcome,
    InvalidBucketState,
    InvalidPart,
    NoSuchBucket,
    NoSuchKey,
    NoSuchUpload,
    NoSuchVersion,
    ObjectInfo,
    ObjectLocked,
    ObjectReader,
    ObjectSpec,
    PartInfo,
    QuotaExceeded,
    StorageBackend,
    TempData,
    UploadInfo,
    log,
)

T = TypeVar("T")
OBJECT_COLUMNS = (
    "bucket, key, size, etag, last_modified, owner_id, owner_name, content_type, headers, meta, checksums, acl,"
    " segments, parts, version_id, latest, delete_marker, lock_mode, lock_until, legal_hold, tags"
)
BUCKET_COLUMNS = (
    "name, owner_id, owner_name, created, location, acl, object_count, bytes_used, versioning, object_lock, lifecycle"
)
META_CACHE_ENTRIES = 50_000
SMALL_OBJECT = 64 << 10  # objects up to this size are served from memory once read
INLINE_MAX = 32 << 10  # objects up to this size keep their bytes in the database (table inline_data)
SMALL_CACHE_BYTES = 64 << 20
TX_BATCH = 256  # transactions committed together at most


def _successor(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with `prefix` (None: no bound)."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if code == 0xD800:
            code = 0xE000
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


def _row_to_object(row: sqlite3.Row | tuple) -> ObjectInfo:
    (bucket, key, size, etag, modified, owner_id, owner_name, ctype, headers, meta, checksums, acl, segs, parts) = row[
        :14
    ]
    version_id, latest, marker, lock_mode, lock_until, legal_hold, tags = row[14:]
    return ObjectInfo(
        bucket=bucket,
        key=key,
        size=size,
        etag=etag,
        last_modified=modified,
        owner_id=owner_id,
        owner_name=owner_name,
        content_type=ctype,
        headers=json.loads(headers),
        meta=json.loads(meta),
        checksums=json.loads(checksums),
        acl=Acl.from_json(acl),
        segments=tuple((s[0], s[1]) for s in json.loads(segs)),
        parts=tuple(json.loads(parts)),
        version_id=version_id,
        is_latest=bool(latest),
        delete_marker=bool(marker),
        lock_mode=lock_mode,
        lock_until=lock_until,
        legal_hold=bool(legal_hold),
        tags=json.loads(tags),
    )


LISTING_COLUMNS = "bucket, key, size, etag, last_modified, owner_id, owner_name, version_id, latest, delete_marker"


def _row_to_listing(row: sqlite3.Row | tuple) -> ObjectInfo:
    """The fields a version listing shows (no headers, metadata, ACL grants or data): a third of the cost."""
    bucket, key, size, etag, modified, owner_id, owner_name, version_id, latest, marker = row
    return ObjectInfo(
        bucket,
        key,
        size,
        etag,
        modified,
        owner_id,
        owner_name,
        "",
        {},
        {},
        {},
        Acl(owner_id, owner_name),
        (),
        (),
        version_id,
        bool(latest),
        bool(marker),
    )


def _object_values(info: ObjectInfo, ordinal: int) -> tuple:
    """The row of `info` for `INSERT ... (OBJECT_COLUMNS, ordinal)`."""
    return (
        info.bucket,
        info.key,
        info.size,
        info.etag,
        info.last_modified,
        info.owner_id,
        info.owner_name,
        info.content_type,
        json.dumps(info.headers),
        json.dumps(info.meta),
        json.dumps(info.checksums),
        info.acl.to_json(),
        json.dumps([list(s) for s in info.segments]),
        json.dumps(list(info.parts)),
        info.version_id,
        int(info.is_latest),
        int(info.delete_marker),
        info.lock_mode,
        info.lock_until,
        int(info.legal_hold),
        json.dumps(info.tags),
        ordinal,
    )


INSERT_VERSION = f"INSERT INTO versions ({OBJECT_COLUMNS}, ordinal) VALUES ({', '.join('?' * 22)})"


def _lock_to_json(enabled: bool, default: DefaultRetention | None) -> str:
    if not enabled:
        return ""
    if default is None:
        return "{}"
    return json.dumps({"mode": default.mode, "days": default.days, "years": default.years})


def _row_to_bucket(row: sqlite3.Row | tuple) -> BucketInfo:
    name, owner_id, owner_name, created, location, acl, count, used, versioning, lock, lifecycle = row
    default = None
    if lock and lock != "{}":
        data = json.loads(lock)
        default = DefaultRetention(data["mode"], data.get("days", 0), data.get("years", 0))
    return BucketInfo(
        name,
        owner_id,
        owner_name,
        created,
        location,
        Acl.from_json(acl),
        count,
        used,
        versioning,
        bool(lock),
        default,
        lifecycle,
    )


def is_inline(data_id: str) -> bool:
    """A segment whose bytes are in inline_data (file data ids are hex only)."""
    return data_id.startswith("i")


def new_version_id() -> str:
    """A version id as S3 makes them: 32 URL-safe characters, never "null"."""
    return secrets.token_urlsafe(24)


def _spec_to_json(spec: ObjectSpec, checksum_algorithm: str) -> str:
    return json.dumps(
        {
            "owner_id": spec.owner_id,
            "owner_name": spec.owner_name,
            "acl": spec.acl.to_json(),
            "content_type": spec.content_type,
            "headers": spec.headers,
            "meta": spec.meta,
            "checksum_algorithm": checksum_algorithm,
            "lock": [spec.lock_mode, spec.lock_until, spec.legal_hold],
            "tags": spec.tags,
        }
    )


def _spec_from_json(text: str) -> tuple[ObjectSpec, str]:
    data = json.loads(text)
    spec = ObjectSpec(
        owner_id=data["owner_id"],
        owner_name=data["owner_name"],
        acl=Acl.from_json(data["acl"]),
        content_type=data["content_type"],
        headers=data["headers"],
        meta=data["meta"],
        tags=data.get("tags", {}),
    )
    if "lock" in data:
        mode, until, hold = data["lock"]
        spec = dataclasses.replace(spec, lock_mode=mode, lock_until=until, legal_hold=hold)
    return spec, data.get("checksum_algorithm", "")


class EmbeddedReader(ObjectReader):
    def __init__(self, backend: EmbeddedBackend, info: ObjectInfo, inline: dict[str, bytes] | None = None):
        self.backend, self.info = backend, info
        self._inline = inline or {}  # bytes of the inline segments, read when the object was opened
        self._files: dict[str, Any] = {}
        self._closed = False
        backend._acquire(info.segments)

    def _pieces(self, start: int, end: int) -> list[tuple[str, int, int]]:
        pieces, offset = [], 0
        for data_id, size in self.info.segments:
            lo, hi = max(start, offset), min(end, offset + size)
            if lo < hi:
                pieces.append((data_id, lo - offset, hi - lo))
            offset += size
            if offset >= end:
                break
        return pieces

    def _file(self, data_id: str) -> Any:
        handle = self._files.get(data_id)
        if handle is None:
            handle = self._files[data_id] = open(self.backend.data_path(data_id), "rb")
        return handle

    def file_ranges(self, start: int, end: int) -> list[tuple[Any, int, int]] | None:
        if self._inline:
            return None
        return [(self._file(data_id), offset, count) for data_id, offset, count in self._pieces(start, end)]

    async def iter_range(self, start: int, end: int, chunk: int = 1 << 20) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        for data_id, offset, count in self._pieces(start, end):
            if data_id in self._inline:
                yield self._inline[data_id][offset : offset + count]
                continue
            fd = self._file(data_id).fileno()
            done = 0
            while done < count:
                data = await loop.run_in_executor(None, os.pread, fd, min(chunk, count - done), offset + done)
                if not data:
                    raise OSError(f"data file {data_id} is shorter than recorded")
                done += len(data)
                yield data

    async def read_small(self) -> bytes:
        """The whole body of a small object, from memory when it was read before."""
        if len(self.info.segments) == 1:
            data_id = self.info.segments[0][0]
            cached = self._inline.get(data_id) or self.backend._small_get(data_id)
            if cached is not None:
                return cached
        body = b"".join([piece async for piece in self.iter_range(0, self.info.size)])
        if len(self.info.segments) == 1:
            self.backend._small_put(self.info.segments[0][0], body)
        return body

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for handle in self._files.values():
            handle.close()
        self._files.clear()
        self.backend._release(self.info.segments)


class EmbeddedBackend(StorageBackend):
    def __init__(self, root: Path, fsync: bool = True):
        super().__init__()
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.data_dir = self.root / "data"
        self.fsync = fsync
        self.db: aiosqlite.Connection | None = None
        self._readers: dict[str, int] = {}  # data id -> open readers
        self._doomed: set[str] = set()  # data ids no longer referenced, unlinked when their last reader closes
        self._meta: OrderedDict[tuple[str, str], ObjectInfo] = OrderedDict()
        self._buckets: dict[str, BucketInfo] = {}
        self._configs: dict[tuple[str, str], str | None] = {}  # (bucket, kind) -> document, None when absent
        self._writes = 0  # bumped on every object change; a reader caches what it read only if unchanged
        self._small: OrderedDict[str, bytes] = OrderedDict()
        self._small_bytes = 0
        self._tx_queue: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future]] = []
        self._tx_running = False

    # --- life cycle ---
    async def start(self) -> None:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        for i in range(256):
            (self.data_dir / f"{i:02x}").mkdir(parents=True, exist_ok=True)
        self.db = await open_db(self.root / "walrus.db", "services.walrus.migrations")
        await self.db.execute("PRAGMA synchronous=FULL")  # an acknowledged object survives a power cut
        removed_tmp, removed_data = await self._recover()
        if removed_tmp or removed_data:
            log.info("start-up clean-up: %d temporary files, %d unreferenced data files", removed_tmp, removed_data)

    async def _recover(self) -> tuple[int, int]:
        """Drop interrupted uploads and data files that no committed row points at."""
        referenced: set[str] = set()
        async with self._db.execute("SELECT segments FROM versions") as cursor:
            async for (segments,) in cursor:
                referenced.update(s[0] for s in json.loads(segments))
        async with self._db.execute("SELECT data_id FROM parts") as cursor:
            async for (data_id,) in cursor:
                referenced.add(data_id)

        def sweep() -> tuple[int, int]:
            tmp = 0
            for entry in os.scandir(self.tmp_dir):
                os.unlink(entry.path)
                tmp += 1
            data = 0
            for sub in os.scandir(self.data_dir):
                for entry in os.scandir(sub.path):
                    if entry.name not in referenced:
                        os.unlink(entry.path)
                        data += 1
            return tmp, data

        return await asyncio.get_running_loop().run_in_executor(None, sweep)

    async def close(self) -> None:
        if self.db is not None:
            await self.db.close()
            self.db = None

    @property
    def _db(self) -> aiosqlite.Connection:
        if self.db is None:
            raise RuntimeError("storage not started")
        return self.db

    async def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` as one transaction on the database thread. A whole transaction runs there in one go (the
        connection is shared: statements of concurrent tasks must not interleave). Transactions that queue up
        while one commits are committed together (group commit: one fsync for many writers), each inside its
        own savepoint so that one failing rolls back only itself."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._tx_queue.append((fn, future))
        if not self._tx_running:
            self._tx_running = True
            asyncio.get_running_loop().create_task(self._tx_batches())
        return await future

    async def _tx_batches(self) -> None:
        db = self._db
        try:
            while self._tx_queue:
                batch, self._tx_queue = self._tx_queue[:TX_BATCH], self._tx_queue[TX_BATCH:]

                def run(batch: list = batch) -> list[tuple[bool, Any]]:
                    conn = db._conn
                    conn.execute("BEGIN IMMEDIATE")
                    outcomes: list[tuple[bool, Any]] = []
                    try:
                        for fn, _ in batch:
                            conn.execute("SAVEPOINT one")
                            try:
                                outcomes.append((True, fn(conn)))
                            except Exception as err:
                                conn.execute("ROLLBACK TO one")
                                outcomes.append((False, err))
                            conn.execute("RELEASE one")
                        conn.commit()
                    except BaseException:
                        conn.rollback()
                        raise
                    return outcomes

                try:
                    outcomes = await db._execute(run)
                except Exception as err:  # the commit itself failed: every transaction of the batch did
                    outcomes = [(False, err)] * len(batch)
                for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
        finally:
            self._tx_running = False

    async def _query(self, sql: str, args: tuple = ()) -> list:
        """One read in one round trip to the database thread (see EmbeddedReader's ordering note)."""
        return list(await self._db.execute_fetchall(sql, args))

    def data_path(self, data_id: str) -> Path:
        return self.data_dir / data_id[:2] / data_id

    # --- readers and data life ---
    def _acquire(self, segments: tuple[tuple[str, int], ...]) -> None:
        for data_id, _ in segments:
            self._readers[data_id] = self._readers.get(data_id, 0) + 1

    def _release(self, segments: tuple[tuple[str, int], ...]) -> None:
        dead = []
        for data_id, _ in segments:
            left = self._readers[data_id] - 1
            if left:
                self._readers[data_id] = left
            else:
                del self._readers[data_id]
                if data_id in self._doomed:
                    self._doomed.discard(data_id)
                    dead.append(data_id)
        if dead:
            self._unlink_later(dead)

    def _drop_data(self, data_ids: list[str]) -> None:
        """Data no committed row references any more: unlink now, or when its last reader is done."""
        now = []
        for data_id in data_ids:
            self._small_drop(data_id)
            if is_inline(data_id):  # its row went with the version's
                continue
            if data_id in self._readers:
                self._doomed.add(data_id)
            else:
                now.append(data_id)
        if now:
            self._unlink_later(now)

    def _unlink_later(self, data_ids: list[str]) -> None:
        paths = [self.data_path(d) for d in data_ids]

        def unlink() -> None:
            for path in paths:
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass

        asyncio.get_running_loop().run_in_executor(None, unlink)

    def _small_get(self, data_id: str) -> bytes | None:
        body = self._small.get(data_id)
        if body is not None:
            self._small.move_to_end(data_id)
        return body

    def _small_put(self, data_id: str, body: bytes, committed_now: bool = False) -> None:
        """Remember a small body: one an open reader holds (so not dropped meanwhile), or one just committed."""
        if len(body) > SMALL_OBJECT or data_id in self._small or (data_id not in self._readers and not committed_now):
            return
        self._small[data_id] = body
        self._small_bytes += len(body)
        while self._small_bytes > SMALL_CACHE_BYTES:
            _, old = self._small.popitem(last=False)
            self._small_bytes -= len(old)

    def _small_drop(self, data_id: str) -> None:
        body = self._small.pop(data_id, None)
        if body is not None:
            self._small_bytes -= len(body)

    def _cache_object(self, info: ObjectInfo) -> None:
        self._meta[(info.bucket, info.key)] = info
        self._meta.move_to_end((info.bucket, info.key))
        if len(self._meta) > META_CACHE_ENTRIES:
            self._meta.popitem(last=False)

    def _changed(self, bucket: str, key: str, info: ObjectInfo | None) -> None:
        self._writes += 1
        if info is None:
            self._meta.pop((bucket, key), None)
        else:
            self._cache_object(info)

    # --- buckets ---
    async def create_bucket(self, name: str, acl: Acl, location: str = "", object_lock: bool = False) -> BucketInfo:
        created = time.time()
        versioning = "Enabled" if object_lock else ""
        lock = _lock_to_json(object_lock, None)

        def tx(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT owner_id FROM buckets WHERE name = ?", (name,)).fetchone()
            if row is not None:
                raise BucketExists(row[0])
            conn.execute(
                "INSERT INTO buckets (name, owner_id, owner_name, created, location, acl, versioning, object_lock)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (name, acl.owner_id, acl.owner_name, created, location, acl.to_json(), versioning, lock),
            )

        await self._tx(tx)
        info = BucketInfo(
            name, acl.owner_id, acl.owner_name, created, location, acl, versioning=versioning, object_lock=object_lock
        )
        self._buckets[name] = info
        return info

    async def get_bucket(self, name: str) -> BucketInfo | None:
        """The bucket (its object_count and bytes_used may lag: they are for display and quotas)."""
        info = self._buckets.get(name)
        if info is not None:
            return info
        rows = await self._query(f"SELECT {BUCKET_COLUMNS} FROM buckets WHERE name = ?", (name,))
        if not rows:
            return None
        info = _row_to_bucket(tuple(rows[0]))
        self._buckets.setdefault(name, info)
        return self._buckets[name]

    async def list_buckets(self, owner_id: str) -> list[BucketInfo]:
        rows = await self._query(f"SELECT {BUCKET_COLUMNS} FROM buckets WHERE owner_id = ? ORDER BY name", (owner_id,))
        return [_row_to_bucket(tuple(r)) for r in rows]

    async def lifecycle_buckets(self) -> list[BucketInfo]:
        rows = await self._query(f"SELECT {BUCKET_COLUMNS} FROM buckets WHERE lifecycle != '' ORDER BY name")
        return [_row_to_bucket(tuple(r)) for r in rows]

    async def owner_usage(self, owner_id: str) -> int:
        rows = await self._query("SELECT COALESCE(SUM(bytes_used), 0) FROM buckets WHERE owner_id = ?", (owner_id,))
        return int(rows[0][0])

    async def delete_bucket(self, name: str) -> None:
        def tx(conn: sqlite3.Connection) -> list[str]:
            if conn.execute("SELECT 1 FROM buckets WHERE name = ?", (name,)).fetchone() is None:
                raise NoSuchBucket(name)
            if conn.execute("SELECT 1 FROM versions WHERE bucket = ? LIMIT 1", (name,)).fetchone() is not None:
                raise BucketNotEmpty(name)
            parts = [
                r[0]
                for r in conn.execute(
                    "SELECT data_id FROM parts JOIN uploads USING (upload_id) WHERE uploads.bucket = ?", (name,)
                )
            ]
            conn.execute("DELETE FROM uploads WHERE bucket = ?", (name,))
            conn.execute("DELETE FROM bucket_configs WHERE bucket = ?", (name,))
            conn.execute("DELETE FROM buckets WHERE name = ?", (name,))
            return parts

        parts = await self._tx(tx)
        self._buckets.pop(name, None)
        for cached in [k for k in self._configs if k[0] == name]:
            del self._configs[cached]
        self._drop_data(parts)

    async def get_bucket_config(self, bucket: str, kind: str) -> str | None:
        cache_key = (bucket, kind)
        if cache_key in self._configs:
            return self._configs[cache_key]
        rows = await self._query("SELECT document FROM bucket_configs WHERE bucket = ? AND kind = ?", cache_key)
        document = rows[0][0] if rows else None
        if len(self._configs) >= META_CACHE_ENTRIES:
            self._configs.clear()
        return self._configs.setdefault(cache_key, document)

    async def put_bucket_config(self, bucket: str, kind: str, document: str | None) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM buckets WHERE name = ?", (bucket,)).fetchone() is None:
                raise NoSuchBucket(bucket)
            if document is None:
                conn.execute("DELETE FROM bucket_configs WHERE bucket = ? AND kind = ?", (bucket, kind))
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO bucket_configs (bucket, kind, document) VALUES (?, ?, ?)",
                    (bucket, kind, document),
                )

        await self._tx(tx)
        self._configs[(bucket, kind)] = document

    async def _update_bucket(self, name: str, check: Callable[[BucketInfo], None], **changes: Any) -> None:
        """Set bucket columns (`changes`, named as BucketInfo fields) after `check` accepts the stored bucket."""
        columns = {
            "acl": lambda v: v.to_json(),
            "versioning": lambda v: v,
            "object_lock": lambda v: _lock_to_json(v[0], v[1]),
            "lifecycle": lambda v: v,
        }

        def tx(conn: sqlite3.Connection) -> None:
            row = conn.execute(f"SELECT {BUCKET_COLUMNS} FROM buckets WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NoSuchBucket(name)
            check(_row_to_bucket(tuple(row)))
            sets = ", ".join(f"{column} = ?" for column in changes)
            values = [columns[column](value) for column, value in changes.items()]
            conn.execute(f"UPDATE buckets SET {sets} WHERE name = ?", (*values, name))

        await self._tx(tx)
        self._buckets.pop(name, None)  # read again, with fresh counters, on next use

    async def set_bucket_acl(self, name: str, acl: Acl) -> None:
        await self._update_bucket(name, lambda bucket: None, acl=acl)

    async def set_bucket_versioning(self, name: str, state: str) -> None:
        if state not in ("Enabled", "Suspended"):
            raise ValueError(state)

        def check(bucket: BucketInfo) -> None:
            if bucket.object_lock and state != "Enabled":
                raise InvalidBucketState("An Object Lock configuration is present on this bucket")

        await self._update_bucket(name, check, versioning=state)

    async def set_bucket_object_lock(self, name: str, default: DefaultRetention | None) -> None:
        def check(bucket: BucketInfo) -> None:
            if bucket.versioning != "Enabled":
                raise InvalidBucketState("Versioning must be 'Enabled' on the bucket to apply a Object Lock")

        await self._update_bucket(name, check, object_lock=(True, default))

    async def set_bucket_lifecycle(self, name: str, rules: str) -> None:
        await self._update_bucket(name, lambda bucket: None, lifecycle=rules)

    # --- objects ---
    async def get_version(self, bucket: str, key: str, version_id: str | None = None) -> ObjectInfo | None:
        if version_id is not None:
            rows = await self._query(
                f"SELECT {OBJECT_COLUMNS} FROM versions WHERE bucket = ? AND key = ? AND version_id = ?",
                (bucket, key, version_id),
            )
            return _row_to_object(tuple(rows[0])) if rows else None
        info = self._meta.get((bucket, key))
        if info is not None:
            self._meta.move_to_end((bucket, key))
            return info
        writes = self._writes
        rows = await self._query(
            f"SELECT {OBJECT_COLUMNS} FROM versions WHERE bucket = ? AND key = ? ORDER BY ordinal LIMIT 1",
            (bucket, key),
        )
        if not rows:
            return None
        info = _row_to_object(tuple(rows[0]))
        if writes == self._writes:
            self._cache_object(info)
        return info

    async def head_object(self, bucket: str, key: str) -> ObjectInfo | None:
        info = await self.get_version(bucket, key)
        return None if info is None or info.delete_marker else info

    async def open_object(self, bucket: str, key: str, version_id: str | None = None) -> EmbeddedReader:
        # Ordering note: a row read in one database round trip is handed to this task before a later commit's
        # continuation runs, so the reader counts on its data (in _acquire, synchronously, right below) before
        # that commit can unlink it. The data is then kept until the reader closes.
        info = await self.get_version(bucket, key, version_id)
        if info is None:
            if await self.get_bucket(bucket) is None:
                raise NoSuchBucket(bucket)
            raise NoSuchKey(key) if version_id is None else NoSuchVersion(version_id)
        if info.delete_marker:
            raise DeleteMarkerHit(info)
        inline = {}
        for data_id, _ in info.segments:
            if is_inline(data_id):
                body = self._small_get(data_id)
                if body is None:
                    rows = await self._query("SELECT bytes FROM inline_data WHERE data_id = ?", (data_id,))
                    if not rows:  # the version went between reading its row and its bytes
                        raise NoSuchKey(key) if version_id is None else NoSuchVersion(version_id)
                    body = bytes(rows[0][0])
                inline[data_id] = body
        return EmbeddedReader(self, info, inline)

    async def new_data(self, hashes: tuple[str, ...] = ()) -> TempData:
        data_id = files.new_data_id()
        return files.FileTempData(data_id, self.data_path(data_id), hashes, self.fsync, INLINE_MAX)

    async def _place(self, data: TempData, allow_inline: bool = True) -> tuple[str, bytes | None]:
        """Finished data about to be committed: (its data id, its bytes if they go into the database with the
        metadata). File data was written and fsynced in place by `finish`."""
        assert isinstance(data, files.FileTempData)
        if data.inline is not None and not allow_inline:
            await asyncio.get_running_loop().run_in_executor(None, data.write_file)
        data.close_fd()
        data.committed = True
        if data.inline is not None:
            return "i" + data.data_id, data.inline
        return data.data_id, None

    async def _link_copy(self, source: ObjectReader) -> tuple[list[tuple[str, int]], dict[str, bytes]]:
        """New names for a version's data: hard links for immutable data files (a copy that costs no bytes), new
        inline rows for bytes kept in the database. (segments, inline bytes by new data id)."""
        assert isinstance(source, EmbeddedReader)
        inline: dict[str, bytes] = {}
        segments: list[tuple[str, int]] = []
        pairs = []
        for data_id, size in source.info.segments:
            new = files.new_data_id()
            if is_inline(data_id):
                inline["i" + new] = source._inline[data_id]
                segments.append(("i" + new, size))
            else:
                pairs.append((data_id, new, size))
                segments.append((new, size))

        def link() -> None:
            dirs = set()
            for old, new, _ in pairs:
                try:
                    os.link(self.data_path(old), self.data_path(new))
                except OSError:  # no hard links here: copy the bytes
                    shutil.copyfile(self.data_path(old), self.data_path(new))
                dirs.add(self.data_path(new).parent)
            if self.fsync:
                for d in dirs:
                    files.fsync_dir(d)

        if pairs:
            await asyncio.get_running_loop().run_in_executor(None, link)
        return segments, inline

    @staticmethod
    def _version_row(conn: sqlite3.Connection, bucket: str, key: str, version_id: str | None) -> tuple | None:
        """(ordinal, ObjectInfo) of a version (the current one for None) inside a transaction."""
        if version_id is None:
            row = conn.execute(
                f"SELECT {OBJECT_COLUMNS}, ordinal FROM versions WHERE bucket = ? AND key = ? ORDER BY ordinal LIMIT 1",
                (bucket, key),
            ).fetchone()
        else:
            row = conn.execute(
                f"SELECT {OBJECT_COLUMNS}, ordinal FROM versions WHERE bucket = ? AND key = ? AND version_id = ?",
                (bucket, key, version_id),
            ).fetchone()
        return None if row is None else (row[-1], _row_to_object(tuple(row)[:-1]))

    @staticmethod
    def _remove_version(conn: sqlite3.Connection, info: ObjectInfo, ordinal: int) -> None:
        """Delete one version row (and its inline bytes) and keep the counters and the key's current version."""
        conn.execute(
            "DELETE FROM versions WHERE bucket = ? AND key = ? AND ordinal = ?", (info.bucket, info.key, ordinal)
        )
        for data_id, _ in info.segments:
            if is_inline(data_id):
                conn.execute("DELETE FROM inline_data WHERE data_id = ?", (data_id,))
        conn.execute(
            "UPDATE buckets SET bytes_used = bytes_used - ?, object_count = object_count - ? WHERE name = ?",
            (info.size, 0 if info.delete_marker else 1, info.bucket),
        )
        if info.is_latest:  # the next newer version left becomes current
            conn.execute(
                "UPDATE versions SET latest = 1 WHERE bucket = ? AND key = ? AND ordinal ="
                " (SELECT MIN(ordinal) FROM versions WHERE bucket = ? AND key = ?)",
                (info.bucket, info.key, info.bucket, info.key),
            )

    def _add_version(
        self, conn: sqlite3.Connection, info: ObjectInfo, quota: tuple[int, int], inline: dict[str, bytes] | None = None
    ) -> tuple[ObjectInfo, ObjectInfo | None, list[ObjectInfo]]:
        """Make `info` the current version of its key as the bucket's versioning says (a new version id, or the
        `null` version replaced). Returns (the version as stored, the previous current version, versions removed)."""
        bucket_row = conn.execute(
            "SELECT owner_id, bytes_used, versioning FROM buckets WHERE name = ?", (info.bucket,)
        ).fetchone()
        if bucket_row is None:
            raise NoSuchBucket(info.bucket)
        previous = self._version_row(conn, info.bucket, info.key, None)
        removed: list[tuple[int, ObjectInfo]] = []
        if bucket_row[2] == "Enabled":
            version_id = new_version_id()
        else:
            version_id = "null"
            null = self._version_row(conn, info.bucket, info.key, "null")
            if null is not None:
                ordinal, old = null
                if old.locked(time.time()):
                    raise ObjectLocked(old.locked(time.time()))
                removed.append(null)
        growth = info.size - sum(old.size for _, old in removed)
        bucket_limit, owner_limit = quota
        if growth > 0 and bucket_limit and bucket_row[1] + growth > bucket_limit:
            raise QuotaExceeded(f"bucket quota of {bucket_limit} bytes")
        if growth > 0 and owner_limit:
            used = conn.execute(
                "SELECT COALESCE(SUM(bytes_used), 0) FROM buckets WHERE owner_id = ?", (bucket_row[0],)
            ).fetchone()[0]
            if used + growth > owner_limit:
                raise QuotaExceeded(f"account quota of {owner_limit} bytes")
        for ordinal, old in removed:
            self._remove_version(conn, dataclasses.replace(old, is_latest=False), ordinal)
        conn.execute(
            "UPDATE versions SET latest = 0 WHERE bucket = ? AND key = ? AND latest = 1", (info.bucket, info.key)
        )
        newest = conn.execute(
            "SELECT MIN(ordinal) FROM versions WHERE bucket = ? AND key = ?", (info.bucket, info.key)
        ).fetchone()[0]
        stored = dataclasses.replace(info, version_id=version_id, is_latest=True)
        for data_id, body in (inline or {}).items():
            conn.execute("INSERT INTO inline_data (data_id, bytes) VALUES (?, ?)", (data_id, body))
        conn.execute(INSERT_VERSION, _object_values(stored, (newest if newest is not None else 1) - 1))
        conn.execute(
            "UPDATE buckets SET bytes_used = bytes_used + ?, object_count = object_count + ? WHERE name = ?",
            (info.size, 0 if info.delete_marker else 1, info.bucket),
        )
        return stored, (previous[1] if previous else None), [old for _, old in removed]

    async def _after_change(
        self, bucket: str, key: str, previous: ObjectInfo | None, removed: list[ObjectInfo], kind: str
    ) -> None:
        """Bookkeeping after a committed change of a key: caches, data no version uses any more, change hooks
        (`previous`: the version that stopped being current, if one did)."""
        self._changed(bucket, key, None)
        self._drop_data([s[0] for old in removed for s in old.segments])
        if previous is not None and not previous.delete_marker:
            await self._notify(ChangeEvent(kind, bucket, key, previous))

    async def _commit_info(
        self, info: ObjectInfo, quota: tuple[int, int], inline: dict[str, bytes] | None = None
    ) -> ObjectInfo:
        try:
            stored, previous, removed = await self._tx(lambda conn: self._add_version(conn, info, quota, inline))
        except BaseException:
            self._drop_data([s[0] for s in info.segments])
            raise
        for data_id, body in (inline or {}).items():  # the first GET after a small PUT comes from memory
            self._small_put(data_id, body, committed_now=True)
        await self._after_change(info.bucket, info.key, previous, removed, "overwrite")
        return stored

    @staticmethod
    def _info(bucket: str, key: str, spec: ObjectSpec, etag: str, segments: list, parts: tuple = ()) -> ObjectInfo:
        return ObjectInfo(
            bucket=bucket,
            key=key,
            size=sum(size for _, size in segments),
            etag=etag,
            last_modified=time.time(),
            owner_id=spec.owner_id,
            owner_name=spec.owner_name,
            content_type=spec.content_type,
            headers=dict(spec.headers),
            meta=dict(spec.meta),
            checksums=dict(spec.checksums),
            acl=spec.acl,
            segments=tuple((d, s) for d, s in segments),
            parts=parts,
            lock_mode=spec.lock_mode,
            lock_until=spec.lock_until,
            legal_hold=spec.legal_hold,
            tags=dict(spec.tags),
        )

    async def commit_object(
        self, bucket: str, key: str, data: TempData, spec: ObjectSpec, quota: tuple[int, int] = (0, 0)
    ) -> ObjectInfo:
        data_id, body = await self._place(data)
        info = self._info(bucket, key, spec, data.digest("md5").hex(), [(data_id, data.size)])
        return await self._commit_info(info, quota, {data_id: body} if body is not None else None)

    async def copy_object(
        self, source: ObjectReader, bucket: str, key: str, spec: ObjectSpec, quota: tuple[int, int] = (0, 0)
    ) -> ObjectInfo:
        segments, inline = await self._link_copy(source)
        info = self._info(bucket, key, spec, source.info.etag, segments, source.info.parts)
        return await self._commit_info(info, quota, inline)

    async def delete_object(
        self,
        bucket: str,
        key: str,
        version_id: str | None = None,
        bypass_governance: bool = False,
        if_latest: str | None = None,
        owner: tuple[str, str] = ("", ""),
    ) -> DeleteOutcome | None:
        now = time.time()

        def tx(conn: sqlite3.Connection) -> tuple[DeleteOutcome | None, ObjectInfo | None, list[ObjectInfo]]:
            bucket_row = conn.execute("SELECT versioning FROM buckets WHERE name = ?", (bucket,)).fetchone()
            if bucket_row is None:
                raise NoSuchBucket(bucket)
            current = self._version_row(conn, bucket, key, None)
            previous = current[1] if current else None
            if if_latest is not None and (previous is None or previous.version_id != if_latest):
                return None, None, []
            if version_id is not None:  # that version, for good
                found = self._version_row(conn, bucket, key, version_id)
                if found is None:
                    return None, None, []
                ordinal, old = found
                why = old.locked(now, bypass_governance)
                if why:
                    raise ObjectLocked(why)
                self._remove_version(conn, old, ordinal)
                return DeleteOutcome(old.version_id, old.delete_marker), (previous if old.is_latest else None), [old]
            if not bucket_row[0]:  # versioning never enabled: the object goes
                if current is None or previous is None:
                    return None, None, []
                why = previous.locked(now, bypass_governance)
                if why:
                    raise ObjectLocked(why)
                self._remove_version(conn, previous, current[0])
                return DeleteOutcome("null", False), previous, [previous]
            marker = ObjectInfo(
                bucket=bucket,
                key=key,
                size=0,
                etag="",
                last_modified=now,
                owner_id=owner[0],
                owner_name=owner[1],
                content_type="",
                headers={},
                meta={},
                checksums={},
                acl=Acl("", ""),
                segments=(),
                delete_marker=True,
            )
            stored, _, removed = self._add_version(conn, marker, (0, 0))
            return DeleteOutcome(stored.version_id, True, created=True), previous, removed

        outcome, previous, removed = await self._tx(tx)
        await self._after_change(bucket, key, previous, removed, "delete")
        return outcome

    async def set_object_acl(self, bucket: str, key: str, acl: Acl, version_id: str | None = None) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            found = self._version_row(conn, bucket, key, version_id)
            if found is None or found[1].delete_marker:
                raise NoSuchKey(key) if version_id is None else NoSuchVersion(version_id)
            conn.execute(
                "UPDATE versions SET acl = ? WHERE bucket = ? AND key = ? AND ordinal = ?",
                (acl.to_json(), bucket, key, found[0]),
            )

        await self._tx(tx)
        self._changed(bucket, key, None)

    async def set_object_tags(
        self, bucket: str, key: str, tags: dict[str, str], version_id: str | None = None
    ) -> ObjectInfo:
        def tx(conn: sqlite3.Connection) -> ObjectInfo:
            found = self._version_row(conn, bucket, key, version_id)
            if found is None:
                if conn.execute("SELECT 1 FROM buckets WHERE name = ?", (bucket,)).fetchone() is None:
                    raise NoSuchBucket(bucket)
                raise NoSuchKey(key) if version_id is None else NoSuchVersion(version_id)
            ordinal, info = found
            if info.delete_marker:
                raise DeleteMarkerHit(info)
            conn.execute(
                "UPDATE versions SET tags = ? WHERE bucket = ? AND key = ? AND ordinal = ?",
                (json.dumps(tags), bucket, key, ordinal),
            )
            return dataclasses.replace(info, tags=dict(tags))

        info = await self._tx(tx)
        self._changed(bucket, key, None)
        return info

    async def set_object_lock(
        self,
        bucket: str,
        key: str,
        version_id: str | None,
        *,
        retention: tuple[str, float] | None = None,
        legal_hold: bool | None = None,
        bypass_governance: bool = False,
    ) -> ObjectInfo:
        now = time.time()

        def tx(conn: sqlite3.Connection) -> ObjectInfo:
            found = self._version_row(conn, bucket, key, version_id)
            if found is None:
                if conn.execute("SELECT 1 FROM buckets WHERE name = ?", (bucket,)).fetchone() is None:
                    raise NoSuchBucket(bucket)
                raise NoSuchKey(key) if version_id is None else NoSuchVersion(version_id)
            ordinal, info = found
            if info.delete_marker:
                raise DeleteMarkerHit(info)
            if retention is not None:
                mode, until = retention
                active = info.lock_mode and info.lock_until > now
                weaker = (
                    not mode or until < info.lock_until or (mode != info.lock_mode and info.lock_mode == "COMPLIANCE")
                )
                if active and weaker and (info.lock_mode == "COMPLIANCE" or not bypass_governance):
                    raise ObjectLocked(f"it is retained in {info.lock_mode} mode")
                info = dataclasses.replace(info, lock_mode=mode, lock_until=until if mode else 0.0)
            if legal_hold is not None:
                info = dataclasses.replace(info, legal_hold=legal_hold)
            conn.execute(
                "UPDATE versions SET lock_mode = ?, lock_until = ?, legal_hold = ?"
                " WHERE bucket = ? AND key = ? AND ordinal = ?",
                (info.lock_mode, info.lock_until, int(info.legal_hold), bucket, key, ordinal),
            )
            return info

        info = await self._tx(tx)
        self._changed(bucket, key, None)
        return info

    def _key_range(self, sql: str, args: list[Any], prefix: str) -> str:
        if prefix:
            sql += " AND key >= ?"
            args.append(prefix)
            upper = _successor(prefix)
            if upper is not None:
                sql += " AND key < ?"
                args.append(upper)
        return sql

    async def list_objects(self, bucket: str, prefix: str, after: str, limit: int) -> list[ObjectInfo]:
        # `latest = 1 AND delete_marker = 0` as written lets SQLite use the partial index of current objects
        sql = f"SELECT {OBJECT_COLUMNS} FROM versions WHERE bucket = ? AND key > ? AND latest = 1 AND delete_marker = 0"
        args: list[Any] = [bucket, after]
        sql = self._key_range(sql, args, prefix) + " ORDER BY key LIMIT ?"
        args.append(limit)
        return [_row_to_object(tuple(r)) for r in await self._query(sql, tuple(args))]

    async def list_versions(
        self, bucket: str, prefix: str, key_marker: str, version_marker: str, limit: int
    ) -> list[ObjectInfo]:
        found: list[ObjectInfo] = []
        if version_marker:  # the rest of key_marker's versions first
            rows = await self._query(
                "SELECT ordinal FROM versions WHERE bucket = ? AND key = ? AND version_id = ?",
                (bucket, key_marker, version_marker),
            )
            if not rows:
                raise NoSuchVersion(version_marker)
            if key_marker.startswith(prefix):
                rows = await self._query(
                    f"SELECT {LISTING_COLUMNS} FROM versions WHERE bucket = ? AND key = ? AND ordinal > ?"
                    " ORDER BY ordinal LIMIT ?",
                    (bucket, key_marker, rows[0][0], limit),
                )
                found = [_row_to_listing(r) for r in rows]
        if len(found) < limit:
            args: list[Any] = [bucket, key_marker]
            sql = self._key_range(f"SELECT {LISTING_COLUMNS} FROM versions WHERE bucket = ? AND key > ?", args, prefix)
            args.append(limit - len(found))
            rows = await self._query(sql + " ORDER BY key, ordinal LIMIT ?", tuple(args))
            found += [_row_to_listing(r) for r in rows]
        return found

    # --- multipart ---
    async def create_upload(self, bucket: str, key: str, spec: ObjectSpec, checksum_algorithm: str = "") -> str:
        upload_id = files.new_data_id()

        def tx(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM buckets WHERE name = ?", (bucket,)).fetchone() is None:
                raise NoSuchBucket(bucket)
            conn.execute(
                "INSERT INTO uploads (upload_id, bucket, key, initiated, owner_id, owner_name, spec)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    upload_id,
                    bucket,
                    key,
                    time.time(),
                    spec.owner_id,
                    spec.owner_name,
                    _spec_to_json(spec, checksum_algorithm),
                ),
            )

        await self._tx(tx)
        return upload_id

    @staticmethod
    def _row_to_upload(row: tuple) -> UploadInfo:
        upload_id, bucket, key, initiated, owner_id, owner_name, spec_json = row
        spec, algorithm = _spec_from_json(spec_json)
        return UploadInfo(upload_id, bucket, key, initiated, owner_id, owner_name, spec, algorithm)

    async def get_upload(self, upload_id: str) -> UploadInfo | None:
        rows = await self._query("SELECT * FROM uploads WHERE upload_id = ?", (upload_id,))
        return self._row_to_upload(tuple(rows[0])) if rows else None

    async def commit_part(
        self, upload_id: str, part_number: int, data: TempData, checksums: dict[str, str]
    ) -> PartInfo:
        data_id, _ = await self._place(data, allow_inline=False)  # parts are files: objects assemble them
        part = PartInfo(part_number, data.size, data.digest("md5").hex(), time.time(), checksums, data_id)

        def tx(conn: sqlite3.Connection) -> str | None:
            if conn.execute("SELECT 1 FROM uploads WHERE upload_id = ?", (upload_id,)).fetchone() is None:
                raise NoSuchUpload(upload_id)
            old = conn.execute(
                "SELECT data_id FROM parts WHERE upload_id = ? AND part_number = ?", (upload_id, part_number)
            ).fetchone()
            conn.execute(
                "INSERT OR REPLACE INTO parts (upload_id, part_number, data_id, size, etag, last_modified, checksums)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (upload_id, part_number, data_id, part.size, part.etag, part.last_modified, json.dumps(checksums)),
            )
            return old[0] if old else None

        try:
            old = await self._tx(tx)
        except BaseException:
            self._drop_data([data_id])
            raise
        if old:
            self._drop_data([old])
        return part

    async def list_parts(self, upload_id: str, after: int = 0, limit: int = 10000) -> list[PartInfo]:
        rows = await self._query(
            "SELECT part_number, size, etag, last_modified, checksums, data_id FROM parts"
            " WHERE upload_id = ? AND part_number > ? ORDER BY part_number LIMIT ?",
            (upload_id, after, limit),
        )
        return [PartInfo(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5]) for r in rows]

    async def complete_upload(
        self,
        upload_id: str,
        parts: list[tuple[int, str]],
        etag: str,
        checksums: dict[str, str],
        quota: tuple[int, int],
    ) -> ObjectInfo:
        def tx(conn: sqlite3.Connection) -> tuple[ObjectInfo, ObjectInfo | None, list[ObjectInfo], list[str]]:
            row = conn.execute("SELECT * FROM uploads WHERE upload_id = ?", (upload_id,)).fetchone()
            if row is None:
                raise NoSuchUpload(upload_id)
            upload = self._row_to_upload(tuple(row))
            stored = {
                r[0]: (r[1], r[2], r[3])
                for r in conn.execute(
                    "SELECT part_number, data_id, size, etag FROM parts WHERE upload_id = ?", (upload_id,)
                )
            }
            segments = []
            for number, part_etag in parts:
                found = stored.get(number)
                if found is None or found[2] != part_etag:
                    raise InvalidPart(str(number))
                segments.append((found[0], found[1]))
            spec = dataclasses.replace(upload.spec, checksums=checksums)
            info = self._info(upload.bucket, upload.key, spec, etag, segments, tuple(s for _, s in segments))
            stored_info, previous, removed = self._add_version(conn, info, quota)
            used = {d for d, _ in segments}
            unused = [d for d, _, _ in stored.values() if d not in used]
            conn.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))
            return stored_info, previous, removed, unused

        info, previous, removed, unused = await self._tx(tx)
        self._drop_data(unused)
        await self._after_change(info.bucket, info.key, previous, removed, "overwrite")
        return info

    async def part_sizes(self, upload_id: str) -> dict[int, tuple[int, str]]:
        rows = await self._query("SELECT part_number, size, etag FROM parts WHERE upload_id = ?", (upload_id,))
        return {r[0]: (r[1], r[2]) for r in rows}

    async def abort_upload(self, upload_id: str) -> None:
        def tx(conn: sqlite3.Connection) -> list[str]:
            if conn.execute("SELECT 1 FROM uploads WHERE upload_id = ?", (upload_id,)).fetchone() is None:
                raise NoSuchUpload(upload_id)
            ids = [r[0] for r in conn.execute("SELECT data_id FROM parts WHERE upload_id = ?", (upload_id,))]
            conn.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))
            return ids

        self._drop_data(await self._tx(tx))

    async def list_uploads(
        self, bucket: str, prefix: str, key_marker: str, upload_id_marker: str, limit: int
    ) -> list[UploadInfo]:
        if upload_id_marker:
            sql = "SELECT * FROM uploads WHERE bucket = ? AND (key > ? OR (key = ? AND upload_id > ?))"
            args: list[Any] = [bucket, key_marker, key_marker, upload_id_marker]
        else:
            sql, args = "SELECT * FROM uploads WHERE bucket = ? AND key > ?", [bucket, key_marker]
        if prefix:
            sql += " AND key >= ?"
            args.append(prefix)
            upper = _successor(prefix)
            if upper is not None:
                sql += " AND key < ?"
                args.append(upper)
        sql += " ORDER BY key, initiated, upload_id LIMIT ?"
        args.append(limit)
        return [self._row_to_upload(tuple(r)) for r in await self._query(sql, tuple(args))]
