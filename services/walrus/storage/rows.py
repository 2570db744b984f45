"""The embedded backend's rows: the column lists of its tables and the conversions between rows and the storage
layer's types (pure functions, no I/O)."""

from __future__ import annotations

import dataclasses
import json
import secrets
import string
from typing import Any

from services.walrus.storage.base import Acl, BucketInfo, DefaultRetention, ObjectInfo, ObjectSpec, UploadInfo

Row = tuple[Any, ...]


OBJECT_COLUMNS = (
    "bucket, key, size, etag, last_modified, owner_id, owner_name, content_type, headers, meta, checksums, acl,"
    " segments, parts, version_id, latest, delete_marker, lock_mode, lock_until, legal_hold, tags"
)
BUCKET_COLUMNS = (
    "name, owner_id, owner_name, created, location, acl, object_count, bytes_used, versioning, object_lock, lifecycle"
)


def successor(prefix: str) -> str | None:
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


def object_from_row(row: Row) -> ObjectInfo:
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


def listing_from_row(row: Row) -> ObjectInfo:
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


def _dumps(value: dict[str, str] | list[object]) -> str:
    """JSON of a row's field; the usual empty ones without the encoder (five calls per PUT)."""
    if not value:
        return "{}" if isinstance(value, dict) else "[]"
    return json.dumps(value)


def object_values(info: ObjectInfo, ordinal: int) -> Row:
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
        _dumps(info.headers),
        _dumps(info.meta),
        _dumps(info.checksums),
        info.acl.to_json(),
        json.dumps([list(s) for s in info.segments]),
        _dumps(list(info.parts)),
        info.version_id,
        int(info.is_latest),
        int(info.delete_marker),
        info.lock_mode,
        info.lock_until,
        int(info.legal_hold),
        _dumps(info.tags),
        ordinal,
    )


INSERT_VERSION = f"INSERT INTO versions ({OBJECT_COLUMNS}, ordinal) VALUES ({', '.join('?' * 22)})"


def lock_to_json(enabled: bool, default: DefaultRetention | None) -> str:
    if not enabled:
        return ""
    if default is None:
        return "{}"
    return json.dumps({"mode": default.mode, "days": default.days, "years": default.years})


def bucket_from_row(row: Row) -> BucketInfo:
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


# A version id's first character: never "-", which command-line parsers take for an option (awscli refused
# `--version-id -Xyz...` with its usage text: one id in 64 could not be named that way).
_VERSION_ID_FIRST = string.ascii_letters + string.digits


def new_version_id() -> str:
    """A version id as S3 makes them: 32 URL-safe characters, never "null", never starting with "-"."""
    return secrets.choice(_VERSION_ID_FIRST) + secrets.token_urlsafe(24)[1:]


def spec_to_json(spec: ObjectSpec, checksum_algorithm: str) -> str:
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


def spec_from_json(text: str) -> tuple[ObjectSpec, str]:
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


def upload_from_row(row: Row) -> UploadInfo:
    """An upload from `SELECT * FROM uploads`."""
    upload_id, bucket, key, initiated, owner_id, owner_name, spec_json = row
    spec, algorithm = spec_from_json(spec_json)
    return UploadInfo(upload_id, bucket, key, initiated, owner_id, owner_name, spec, algorithm)


def key_range(sql: str, args: list[Any], prefix: str) -> str:
    """`sql` narrowed to keys that start with `prefix` (as a range, so that SQLite uses the key index)."""
    if prefix:
        sql += " AND key >= ?"
        args.append(prefix)
        upper = successor(prefix)
        if upper is not None:
            sql += " AND key < ?"
            args.append(upper)
    return sql
