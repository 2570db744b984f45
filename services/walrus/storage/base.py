"""Types and the abstract interface every Walrus storage backend implements (see the package docstring)."""

from __future__ import annotations

import abc
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("koala.walrus.storage")

# ACL grantees that are groups, as in S3, plus the cloud itself (aws-exec-read readers).
ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
AUTHENTICATED_USERS = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"
CLOUD_GROUP = "urn:koala:groups:cloud"
PERMISSIONS = ("FULL_CONTROL", "WRITE", "WRITE_ACP", "READ", "READ_ACP")


class StorageError(Exception):
    """Base of the errors a backend raises; the S3 layer maps each to its S3 error."""


class NoSuchBucket(StorageError):
    pass


class NoSuchKey(StorageError):
    pass


class NoSuchUpload(StorageError):
    pass


class BucketNotEmpty(StorageError):
    pass


class BucketExists(StorageError):
    def __init__(self, owner_id: str):
        super().__init__(owner_id)
        self.owner_id = owner_id


class InvalidPart(StorageError):
    """A part named in CompleteMultipartUpload is missing or its ETag does not match."""


class QuotaExceeded(StorageError):
    pass


@dataclass(frozen=True)
class Grant:
    grantee_type: str  # "CanonicalUser" or "Group"
    grantee: str  # account id, or group URI
    permission: str  # one of PERMISSIONS
    display_name: str = ""


@dataclass(frozen=True)
class Acl:
    owner_id: str
    owner_name: str
    grants: tuple[Grant, ...] = ()

    def to_json(self) -> str:
        return json.dumps(
            {
                "owner_id": self.owner_id,
                "owner_name": self.owner_name,
                "grants": [[g.grantee_type, g.grantee, g.permission, g.display_name] for g in self.grants],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Acl:
        data = json.loads(text)
        return cls(data["owner_id"], data["owner_name"], tuple(Grant(*g) for g in data["grants"]))

    @classmethod
    def private(cls, owner_id: str, owner_name: str) -> Acl:
        return cls(owner_id, owner_name, (Grant("CanonicalUser", owner_id, "FULL_CONTROL", owner_name),))


@dataclass(frozen=True)
class BucketInfo:
    name: str
    owner_id: str
    owner_name: str
    created: float
    location: str
    acl: Acl
    object_count: int = 0
    bytes_used: int = 0


@dataclass(frozen=True)
class ObjectSpec:
    """What a writer says about a new object besides its bytes."""

    owner_id: str
    owner_name: str
    acl: Acl
    content_type: str = "binary/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)  # Content-Encoding, Cache-Control, ...
    meta: dict[str, str] = field(default_factory=dict)  # x-amz-meta-* without the prefix
    checksums: dict[str, str] = field(default_factory=dict)  # "crc32" -> base64 value


@dataclass(frozen=True)
class ObjectInfo:
    bucket: str
    key: str
    size: int
    etag: str  # without quotes: md5 hex, or "<md5 of part md5s>-N"
    last_modified: float
    owner_id: str
    owner_name: str
    content_type: str
    headers: dict[str, str]
    meta: dict[str, str]
    checksums: dict[str, str]
    acl: Acl
    segments: tuple[tuple[str, int], ...]  # (data id, size) in order; opaque to callers
    parts: tuple[int, ...] = ()  # part sizes of a multipart object


@dataclass(frozen=True)
class UploadInfo:
    upload_id: str
    bucket: str
    key: str
    initiated: float
    owner_id: str
    owner_name: str
    spec: ObjectSpec
    checksum_algorithm: str = ""


@dataclass(frozen=True)
class PartInfo:
    part_number: int
    size: int
    etag: str
    last_modified: float
    checksums: dict[str, str]
    data_id: str = ""


@dataclass(frozen=True)
class ChangeEvent:
    """An object that was overwritten ("overwrite") or deleted ("delete"); `old` is what it was."""

    kind: str
    bucket: str
    key: str
    old: ObjectInfo


ChangeHook = Callable[[ChangeEvent], Awaitable[None] | None]


class TempData(abc.ABC):
    """Bytes being written to storage before they are committed; hashes are computed on the way."""

    size: int

    @abc.abstractmethod
    async def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    async def finish(self) -> None:
        """Flush and fsync; after this the digests are final."""

    @abc.abstractmethod
    def digest(self, name: str) -> bytes:
        """The digest of algorithm `name` ("md5" always; others as asked for in `new_data`)."""

    @abc.abstractmethod
    async def abort(self) -> None: ...


class ObjectReader(abc.ABC):
    """An open object: a consistent snapshot of one version, readable even if it is overwritten meanwhile.
    Use as `async with`; closing releases the data."""

    info: ObjectInfo

    @abc.abstractmethod
    def iter_range(self, start: int, end: int, chunk: int = 1 << 20) -> AsyncIterator[bytes]:
        """Bytes [start, end) in chunks."""

    def file_ranges(self, start: int, end: int) -> list[tuple[Any, int, int]] | None:
        """(file object, offset, count) pieces for sendfile, or None if this backend cannot offer files."""
        return None

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> ObjectReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class StorageBackend(abc.ABC):
    """Buckets, objects and multipart uploads. All methods are coroutines safe to call concurrently."""

    def __init__(self) -> None:
        self.change_hooks: list[ChangeHook] = []

    async def _notify(self, event: ChangeEvent) -> None:
        for hook in list(self.change_hooks):
            try:
                result = hook(event)
                if result is not None:
                    await result
            except Exception:  # a hook's failure must not fail the write that already happened
                log.exception("change hook %r failed for %s %s/%s", hook, event.kind, event.bucket, event.key)

    async def start(self) -> None:
        """Open, recover from a crash (drop temporary data), get ready."""
        return None

    async def close(self) -> None:
        """Release everything."""
        return None

    # --- buckets ---
    @abc.abstractmethod
    async def create_bucket(self, name: str, acl: Acl, location: str = "") -> BucketInfo: ...

    @abc.abstractmethod
    async def get_bucket(self, name: str) -> BucketInfo | None: ...

    @abc.abstractmethod
    async def list_buckets(self, owner_id: str) -> list[BucketInfo]: ...

    @abc.abstractmethod
    async def delete_bucket(self, name: str) -> None: ...

    @abc.abstractmethod
    async def set_bucket_acl(self, name: str, acl: Acl) -> None: ...

    @abc.abstractmethod
    async def owner_usage(self, owner_id: str) -> int:
        """Bytes stored in all buckets of an owner (for quotas)."""

    # --- objects ---
    @abc.abstractmethod
    async def head_object(self, bucket: str, key: str) -> ObjectInfo | None: ...

    @abc.abstractmethod
    async def open_object(self, bucket: str, key: str) -> ObjectReader:
        """Raises NoSuchBucket or NoSuchKey."""

    @abc.abstractmethod
    async def new_data(self, hashes: tuple[str, ...] = ()) -> TempData:
        """A temporary writer; "md5" is always computed; `hashes` adds e.g. "sha256", "crc32", "crc32c"."""

    @abc.abstractmethod
    async def commit_object(
        self, bucket: str, key: str, data: TempData, spec: ObjectSpec, quota: tuple[int, int] = (0, 0)
    ) -> ObjectInfo:
        """Make finished `data` the object at bucket/key, atomically (last commit wins). `quota` is
        (bucket limit, owner limit) in bytes, 0 for none; raises QuotaExceeded."""

    @abc.abstractmethod
    async def copy_object(
        self, source: ObjectReader, bucket: str, key: str, spec: ObjectSpec, quota: tuple[int, int] = (0, 0)
    ) -> ObjectInfo:
        """A new object with the bytes of an open object."""

    @abc.abstractmethod
    async def delete_object(self, bucket: str, key: str) -> bool:
        """True if there was an object."""

    @abc.abstractmethod
    async def set_object_acl(self, bucket: str, key: str, acl: Acl) -> None: ...

    @abc.abstractmethod
    async def list_objects(self, bucket: str, prefix: str, after: str, limit: int) -> list[ObjectInfo]:
        """Objects with `prefix` and key > `after`, in key order, at most `limit`."""

    # --- multipart ---
    @abc.abstractmethod
    async def create_upload(self, bucket: str, key: str, spec: ObjectSpec, checksum_algorithm: str = "") -> str: ...

    @abc.abstractmethod
    async def get_upload(self, upload_id: str) -> UploadInfo | None: ...

    @abc.abstractmethod
    async def commit_part(
        self, upload_id: str, part_number: int, data: TempData, checksums: dict[str, str]
    ) -> PartInfo: ...

    @abc.abstractmethod
    async def list_parts(self, upload_id: str, after: int = 0, limit: int = 10000) -> list[PartInfo]: ...

    @abc.abstractmethod
    async def complete_upload(
        self, upload_id: str, parts: list[tuple[int, str]], etag: str, checksums: dict[str, str], quota: tuple[int, int]
    ) -> ObjectInfo:
        """Assemble the listed (part number, etag) parts into the object; `etag` is the final ETag."""

    @abc.abstractmethod
    async def abort_upload(self, upload_id: str) -> None: ...

    @abc.abstractmethod
    async def list_uploads(
        self, bucket: str, prefix: str, key_marker: str, upload_id_marker: str, limit: int
    ) -> list[UploadInfo]: ...
