"""The embedded backend: metadata in SQLite, data in files on the local disk (or, configured so, in a Ceph pool:
see blobs.py).

Write path: bytes go to a new file `data/xx/<id>` under a fresh random id (hashed on the way), the file and its
directory are fsynced, and only then does one SQLite transaction (group-committed with the writes that queued
meanwhile, acknowledged after an fdatasync of the log: group_commit.py) make it a version of the key (table
`versions`: a key's versions newest first). Until that commit no row names the file, so nobody can see it. A
version's data is unlinked once its row is gone (a `null` version replaced, a version deleted), or later when the
last reader that opened it closes it. A crash at any point leaves either the old or the new object; leftovers (files
no row points at: uploads cut short, data whose unlink did not happen) are removed at start-up.

The parts, by job: `database.py` the SQLite connection on its thread, `group_commit.py` the batched transactions,
`rows.py` the tables' rows, `data_store.py` the data and its life, `blobs.py` (`files.py`, `rados_data.py`) where
its bytes are, `reader.py` an open version. This
module holds the metadata transactions (buckets, versions, uploads) and the caches in front of them.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.database.portable import upsert
from services.walrus.storage.add_version import AddVersion
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
from services.walrus.storage.blobs import Blobs
from services.walrus.storage.data_store import DataStore, is_inline
from services.walrus.storage.database import MetadataDb
from services.walrus.storage.group_commit import GroupCommit, LocalGroupCommit
from services.walrus.storage.reader import EmbeddedReader
from services.walrus.storage.rows import (
    BUCKET_COLUMNS,
    INSERT_VERSION,
    LISTING_COLUMNS,
    OBJECT_COLUMNS,
    bucket_from_row,
    key_range,
    listing_from_row,
    lock_to_json,
    new_version_id,
    object_from_row,
    object_values,
    spec_to_json,
    upload_from_row,
)

META_CACHE_ENTRIES = 50_000
PART_COLUMNS = ("upload_id", "part_number", "data_id", "size", "etag", "last_modified", "checksums")
PART_UPSERT = upsert("parts", PART_COLUMNS, ("upload_id", "part_number"))  # SQL both engines run (shared.py)


class EmbeddedBackend(StorageBackend):
    def __init__(self, root: Path, fsync: bool = True, blobs: Blobs | None = None):
        super().__init__()
        self.root = Path(root)
        self.data = DataStore(self.root, fsync, blobs)
        self.db = MetadataDb(self.root / "walrus.db")
        self._commits: GroupCommit | LocalGroupCommit = LocalGroupCommit(self.db, sync=fsync)
        self._meta: OrderedDict[tuple[str, str], ObjectInfo] = OrderedDict()
        self._buckets: dict[str, BucketInfo] = {}
        self._configs: dict[tuple[str, str], str | None] = {}  # (bucket, kind) -> document, None when absent
        self._writes = 0  # bumped on every object change; a reader caches what it read only if unchanged

    # --- life cycle ---
    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        await self.data.start()
        await self.db.open()
        removed = await self._recover()
        if removed:
            log.info("start-up clean-up: %d unreferenced data", removed)

    async def _recover(self) -> int:
        """Drop interrupted uploads and data that no committed row points at."""

        def referenced(conn: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            for (segments,) in conn.execute("SELECT segments FROM versions"):
                found.update(s[0] for s in json.loads(segments))
            found.update(data_id for (data_id,) in conn.execute("SELECT data_id FROM parts"))
            return found

        return await self.data.sweep(await self.db.run(referenced))

    async def close(self) -> None:
        await self.data.close()
        await self.db.close()

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
        lock = lock_to_json(object_lock, None)

        def tx(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT owner_id FROM buckets WHERE name = ?", (name,)).fetchone()
            if row is not None:
                raise BucketExists(row[0])
            conn.execute(
                "INSERT INTO buckets (name, owner_id, owner_name, created, location, acl, versioning, object_lock)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (name, acl.owner_id, acl.owner_name, created, location, acl.to_json(), versioning, lock),
            )

        await self._commits.run(tx)
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
        rows = await self.db.query(f"SELECT {BUCKET_COLUMNS} FROM buckets WHERE name = ?", (name,))
        if not rows:
            return None
        info = bucket_from_row(tuple(rows[0]))
        self._buckets.setdefault(name, info)
        return self._buckets[name]

    async def list_buckets(self, owner_id: str) -> list[BucketInfo]:
        rows = await self.db.query(
            f"SELECT {BUCKET_COLUMNS} FROM buckets WHERE owner_id = ? ORDER BY name", (owner_id,)
        )
        return [bucket_from_row(tuple(r)) for r in rows]

    async def lifecycle_buckets(self) -> list[BucketInfo]:
        rows = await self.db.query(f"SELECT {BUCKET_COLUMNS} FROM buckets WHERE lifecycle != '' ORDER BY name")
        return [bucket_from_row(tuple(r)) for r in rows]

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

        parts = await self._commits.run(tx)
        self._buckets.pop(name, None)
        for cached in [k for k in self._configs if k[0] == name]:
            del self._configs[cached]
        self.data.drop(parts)

    async def get_bucket_config(self, bucket: str, kind: str) -> str | None:
        cache_key = (bucket, kind)
        if cache_key in self._configs:
            return self._configs[cache_key]
        rows = await self.db.query("SELECT document FROM bucket_configs WHERE bucket = ? AND kind = ?", cache_key)
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
                    upsert("bucket_configs", ("bucket", "kind", "document"), ("bucket", "kind")),
                    (bucket, kind, document),
                )

        await self._commits.run(tx)
        self._configs[(bucket, kind)] = document

    async def _update_bucket(self, name: str, check: Callable[[BucketInfo], None], **changes: Any) -> None:
        """Set bucket columns (`changes`, named as BucketInfo fields) after `check` accepts the stored bucket."""
        columns: dict[str, Callable[[Any], Any]] = {
            "acl": lambda v: v.to_json(),
            "versioning": lambda v: v,
            "object_lock": lambda v: lock_to_json(v[0], v[1]),
            "lifecycle": lambda v: v,
        }

        def tx(conn: sqlite3.Connection) -> None:
            row = conn.execute(f"SELECT {BUCKET_COLUMNS} FROM buckets WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NoSuchBucket(name)
            check(bucket_from_row(tuple(row)))
            sets = ", ".join(f"{column} = ?" for column in changes)
            values = [columns[column](value) for column, value in changes.items()]
            conn.execute(f"UPDATE buckets SET {sets} WHERE name = ?", (*values, name))

        await self._commits.run(tx)
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
            rows = await self.db.query(
                f"SELECT {OBJECT_COLUMNS} FROM versions WHERE bucket = ? AND key = ? AND version_id = ?",
                (bucket, key, version_id),
            )
            return object_from_row(tuple(rows[0])) if rows else None
        info = self._meta.get((bucket, key))
        if info is not None:
            self._meta.move_to_end((bucket, key))
            return info
        writes = self._writes
        rows = await self.db.query(
            f"SELECT {OBJECT_COLUMNS} FROM versions WHERE bucket = ? AND key = ? ORDER BY ordinal LIMIT 1",
            (bucket, key),
        )
        if not rows:
            return None
        info = object_from_row(tuple(rows[0]))
        if writes == self._writes:
            self._cache_object(info)
        return info

    async def head_object(self, bucket: str, key: str) -> ObjectInfo | None:
        info = await self.get_version(bucket, key)
        return None if info is None or info.delete_marker else info

    async def open_object(self, bucket: str, key: str, version_id: str | None = None) -> EmbeddedReader:
        # Ordering note: a row read in one database round trip is handed to this task before a later commit's
        # continuation runs, so the reader counts on its data (in its constructor, synchronously, right below) before
        # that commit can unlink it. The data is then kept until the reader closes.
        info = await self.get_version(bucket, key, version_id)
        if info is None:
            if await self.get_bucket(bucket) is None:
                raise NoSuchBucket(bucket)
            raise NoSuchKey(key) if version_id is None else NoSuchVersion(version_id)
        if info.delete_marker:
            raise DeleteMarkerHit(info)
        inline, fetched = {}, {}
        for data_id, _ in info.segments:
            if is_inline(data_id):
                body = self.data.small_get(data_id)
                if body is None:
                    rows = await self.db.query("SELECT bytes FROM inline_data WHERE data_id = ?", (data_id,))
                    if not rows:  # the version went between reading its row and its bytes
                        raise NoSuchKey(key) if version_id is None else NoSuchVersion(version_id)
                    body = fetched[data_id] = bytes(rows[0][0])
                inline[data_id] = body
        reader = EmbeddedReader(self.data, info, inline)
        for data_id, body in fetched.items():  # held by the reader now: kept in memory for the next reads
            self.data.small_put(data_id, body)
        return reader

    async def new_data(self, hashes: tuple[str, ...] = ()) -> TempData:
        return self.data.new_data(hashes)

    @staticmethod
    def _version_row(
        conn: sqlite3.Connection, bucket: str, key: str, version_id: str | None
    ) -> tuple[int, ObjectInfo] | None:
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
        return None if row is None else (row[-1], object_from_row(tuple(row)[:-1]))

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
            null = previous  # a key without a current version has no versions at all
            if previous is not None and previous[1].version_id != "null":
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
        if previous is not None and all(old.version_id != previous[1].version_id for _, old in removed):
            conn.execute(
                "UPDATE versions SET latest = 0 WHERE bucket = ? AND key = ? AND ordinal = ?",
                (info.bucket, info.key, previous[0]),
            )
        # newer than every version of the key: the current one had the smallest ordinal (it may be gone now)
        ordinal = previous[0] - 1 if previous is not None else 0
        stored = dataclasses.replace(info, version_id=version_id, is_latest=True)
        for data_id, body in (inline or {}).items():
            conn.execute("INSERT INTO inline_data (data_id, bytes) VALUES (?, ?)", (data_id, body))
        conn.execute(INSERT_VERSION, object_values(stored, ordinal))
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
        self.data.drop([s[0] for old in removed for s in old.segments])
        if previous is not None and not previous.delete_marker:
            await self._notify(ChangeEvent(kind, bucket, key, previous))

    async def _commit_info(
        self, info: ObjectInfo, quota: tuple[int, int], inline: dict[str, bytes] | None = None
    ) -> ObjectInfo:
        try:
            stored, previous, removed = await self._commits.run(AddVersion(info, quota, inline, self._add_version))
        except BaseException:
            self.data.drop([s[0] for s in info.segments])
            raise
        for data_id, body in (inline or {}).items():  # the first GET after a small PUT comes from memory
            self.data.small_put(data_id, body, committed_now=True)
        await self._after_change(info.bucket, info.key, previous, removed, "overwrite")
        return stored

    @staticmethod
    def _info(
        bucket: str, key: str, spec: ObjectSpec, etag: str, segments: list[tuple[str, int]], parts: tuple[int, ...] = ()
    ) -> ObjectInfo:
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
        data_id, body = await self.data.place(data)
        info = self._info(bucket, key, spec, data.digest("md5").hex(), [(data_id, data.size)])
        return await self._commit_info(info, quota, {data_id: body} if body is not None else None)

    async def copy_object(
        self, source: ObjectReader, bucket: str, key: str, spec: ObjectSpec, quota: tuple[int, int] = (0, 0)
    ) -> ObjectInfo:
        if not isinstance(source, EmbeddedReader):
            raise TypeError(f"not this backend's reader: {source!r}")
        segments, inline = await self.data.link_copy(source.info.segments, source.inline)
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

        outcome, previous, removed = await self._commits.run(tx)
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

        await self._commits.run(tx)
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

        info = await self._commits.run(tx)
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

        info = await self._commits.run(tx)
        self._changed(bucket, key, None)
        return info

    async def list_objects(self, bucket: str, prefix: str, after: str, limit: int) -> list[ObjectInfo]:
        # `latest = 1 AND delete_marker = 0` as written lets SQLite use the partial index of current objects
        sql = f"SELECT {OBJECT_COLUMNS} FROM versions WHERE bucket = ? AND key > ? AND latest = 1 AND delete_marker = 0"
        args: list[Any] = [bucket, after]
        sql = key_range(sql, args, prefix) + " ORDER BY key LIMIT ?"
        args.append(limit)
        return [object_from_row(tuple(r)) for r in await self.db.query(sql, tuple(args))]

    async def list_versions(
        self, bucket: str, prefix: str, key_marker: str, version_marker: str, limit: int
    ) -> list[ObjectInfo]:
        found: list[ObjectInfo] = []
        if version_marker:  # the rest of key_marker's versions first
            rows = await self.db.query(
                "SELECT ordinal FROM versions WHERE bucket = ? AND key = ? AND version_id = ?",
                (bucket, key_marker, version_marker),
            )
            if not rows:
                raise NoSuchVersion(version_marker)
            if key_marker.startswith(prefix):
                rows = await self.db.query(
                    f"SELECT {LISTING_COLUMNS} FROM versions WHERE bucket = ? AND key = ? AND ordinal > ?"
                    " ORDER BY ordinal LIMIT ?",
                    (bucket, key_marker, rows[0][0], limit),
                )
                found = [listing_from_row(r) for r in rows]
        if len(found) < limit:
            args: list[Any] = [bucket, key_marker]
            sql = key_range(f"SELECT {LISTING_COLUMNS} FROM versions WHERE bucket = ? AND key > ?", args, prefix)
            args.append(limit - len(found))
            rows = await self.db.query(sql + " ORDER BY key, ordinal LIMIT ?", tuple(args))
            found += [listing_from_row(r) for r in rows]
        return found

    # --- multipart ---
    async def create_upload(self, bucket: str, key: str, spec: ObjectSpec, checksum_algorithm: str = "") -> str:
        upload_id = secrets.token_hex(16)  # shown to the client: drawn afresh, unlike a data id

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
                    spec_to_json(spec, checksum_algorithm),
                ),
            )

        await self._commits.run(tx)
        return upload_id

    async def get_upload(self, upload_id: str) -> UploadInfo | None:
        rows = await self.db.query("SELECT * FROM uploads WHERE upload_id = ?", (upload_id,))
        return upload_from_row(tuple(rows[0])) if rows else None

    async def commit_part(
        self, upload_id: str, part_number: int, data: TempData, checksums: dict[str, str]
    ) -> PartInfo:
        data_id, _ = await self.data.place(data, allow_inline=False)  # parts are files: objects assemble them
        part = PartInfo(part_number, data.size, data.digest("md5").hex(), time.time(), checksums, data_id)

        def tx(conn: sqlite3.Connection) -> str | None:
            if conn.execute("SELECT 1 FROM uploads WHERE upload_id = ?", (upload_id,)).fetchone() is None:
                raise NoSuchUpload(upload_id)
            old = conn.execute(
                "SELECT data_id FROM parts WHERE upload_id = ? AND part_number = ?", (upload_id, part_number)
            ).fetchone()
            conn.execute(
                PART_UPSERT,
                (upload_id, part_number, data_id, part.size, part.etag, part.last_modified, json.dumps(checksums)),
            )
            return old[0] if old else None

        try:
            old = await self._commits.run(tx)
        except BaseException:
            self.data.drop([data_id])
            raise
        if old:
            self.data.drop([old])
        return part

    async def list_parts(self, upload_id: str, after: int = 0, limit: int = 10000) -> list[PartInfo]:
        rows = await self.db.query(
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
            upload = upload_from_row(tuple(row))
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

        info, previous, removed, unused = await self._commits.run(tx)
        self.data.drop(unused)
        await self._after_change(info.bucket, info.key, previous, removed, "overwrite")
        return info

    async def abort_upload(self, upload_id: str) -> None:
        def tx(conn: sqlite3.Connection) -> list[str]:
            if conn.execute("SELECT 1 FROM uploads WHERE upload_id = ?", (upload_id,)).fetchone() is None:
                raise NoSuchUpload(upload_id)
            ids = [r[0] for r in conn.execute("SELECT data_id FROM parts WHERE upload_id = ?", (upload_id,))]
            conn.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))
            return ids

        self.data.drop(await self._commits.run(tx))

    async def list_uploads(
        self, bucket: str, prefix: str, key_marker: str, upload_id_marker: str, limit: int
    ) -> list[UploadInfo]:
        if upload_id_marker:
            sql = "SELECT * FROM uploads WHERE bucket = ? AND (key > ? OR (key = ? AND upload_id > ?))"
            args: list[Any] = [bucket, key_marker, key_marker, upload_id_marker]
        else:
            sql, args = "SELECT * FROM uploads WHERE bucket = ? AND key > ?", [bucket, key_marker]
        sql = key_range(sql, args, prefix) + " ORDER BY key, initiated, upload_id LIMIT ?"
        args.append(limit)
        return [upload_from_row(tuple(r)) for r in await self.db.query(sql, tuple(args))]
