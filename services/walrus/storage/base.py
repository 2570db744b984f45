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


class NoSuchVersion(StorageError):
    pass


class DeleteMarkerHit(NoSuchKey):
    """The version asked for (or the current one) is a delete marker; `info` describes it."""

    def __init__(self, info: ObjectInfo):
        super().__init__(info.key)
        self.info = info


class ObjectLocked(StorageError):
    """A retention period or legal hold forbids removing or changing this version."""


class InvalidBucketState(StorageError):
    """The bucket's versioning or Object Lock state does not allow this change."""


VERSIONING_STATES = ("", "Enabled", "Suspended")  # "" = never enabled
LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")


@dataclass(frozen=True)
class DefaultRetention:
    """A bucket's default Object Lock retention, applied to new versions that name none."""

    mode: str  # one of LOCK_MODES
    days: int = 0
    years: int = 0


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
        text: str | None = self.__dict__.get("_json")  # made once: an Acl is immutable and often shared (canned)
        if text is None:
            text = json.dumps(
                {
                    "owner_id": self.owner_id,
                    "owner_name": self.owner_name,
                    "grants": [[g.grantee_type, g.grantee, g.permission, g.display_name] for g in self.grants],
                }
            )
            self.__dict__["_json"] = text  # not a field: equality, hashing and repr ignore it
        return text

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
    versioning: str = ""  # one of VERSIONING_STATES
    object_lock: bool = False
    default_retention: DefaultRetention | None = None
    lifecycle: str = ""  # the lifecycle rules as JSON ("" for none); the S3 layer gives them meaning


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
    lock_mode: str = ""  # Object Lock retention: "", or one of LOCK_MODES until lock_until
    lock_until: float = 0.0
    legal_hold: bool = False
    tags: dict[str, str] = field(default_factory=dict)  # the object's tag set (S3 checks it before)


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
    version_id: str = "null"  # "null" for a version written while versioning was off or suspended
    is_latest: bool = True
    delete_marker: bool = False  # a delete marker has no data, size 0
    lock_mode: str = ""
    lock_until: float = 0.0
    legal_hold: bool = False
    tags: dict[str, str] = field(default_factory=dict)

    def locked(self, now: float, bypass_governance: bool = False) -> str:
        """Why this version may not be removed now ("" if it may)."""
        if self.legal_hold:
            return "a legal hold is on"
        if self.lock_mode and self.lock_until > now:
            if self.lock_mode == "COMPLIANCE" or not bypass_governance:
                return f"it is retained in {self.lock_mode} mode"
        return ""


@dataclass(frozen=True)
class DeleteOutcome:
    """What a delete did: removed version `version_id`, or (created) added a delete marker with that id."""

    version_id: str
    delete_marker: bool  # the version removed or created is a delete marker
    created: bool = False


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
    """An object that was overwritten ("overwrite") or deleted ("delete"); `old` is what it was. A change made
    by another front end on shared metadata (shared.py) arrives as kind "remote" with bucket and key only."""

    kind: str
    bucket: str
    key: str
    old: ObjectInfo | None


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

    async def read_small(self) -> bytes:
        """The whole body at once (for small objects; a backend may serve it from memory)."""
        return b"".join([piece async for piece in self.iter_range(0, self.info.size)])

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
    async def create_bucket(self, name: str, acl: Acl, location: str = "", object_lock: bool = False) -> BucketInfo:
        """A new bucket; with `object_lock` it is created with versioning enabled and Object Lock on."""

    @abc.abstractmethod
    async def set_bucket_versioning(self, name: str, state: str) -> None:
        """ "Enabled" or "Suspended"; InvalidBucketState to suspend a bucket with Object Lock."""

    @abc.abstractmethod
    async def set_bucket_object_lock(self, name: str, default: DefaultRetention | None) -> None:
        """Turn Object Lock on (versioning must be enabled, else InvalidBucketState) with a default retention."""

    @abc.abstractmethod
    async def set_bucket_lifecycle(self, name: str, rules: str) -> None:
        """The lifecycle rules as JSON, "" to remove them."""

    @abc.abstractmethod
    async def lifecycle_buckets(self) -> list[BucketInfo]:
        """Buckets that have lifecycle rules."""

    @abc.abstractmethod
    async def get_bucket(self, name: str) -> BucketInfo | None: ...

    @abc.abstractmethod
    async def list_buckets(self, owner_id: str) -> list[BucketInfo]: ...

    @abc.abstractmethod
    async def delete_bucket(self, name: str) -> None: ...

    @abc.abstractmethod
    async def set_bucket_acl(self, name: str, acl: Acl) -> None: ...

    @abc.abstractmethod
    async def get_bucket_config(self, bucket: str, kind: str) -> str | None:
        """A bucket's configuration document of one kind ("policy", "cors", "tagging", ...), or None. Cheap:
        served from memory after the first read, since the S3 layer asks on every request."""

    @abc.abstractmethod
    async def put_bucket_config(self, bucket: str, kind: str, document: str | None) -> None:
        """Store (or with None remove) a bucket's configuration document; raises NoSuchBucket."""

    # --- objects ---
    @abc.abstractmethod
    async def head_object(self, bucket: str, key: str) -> ObjectInfo | None:
        """The current version of a key, None if there is none or it is a delete marker."""

    @abc.abstractmethod
    async def get_version(self, bucket: str, key: str, version_id: str | None = None) -> ObjectInfo | None:
        """Version `version_id` of a key (the current one for None), delete markers included."""

    @abc.abstractmethod
    async def open_object(self, bucket: str, key: str, version_id: str | None = None) -> ObjectReader:
        """Raises NoSuchBucket, NoSuchKey, NoSuchVersion, or DeleteMarkerHit (a NoSuchKey)."""

    @abc.abstractmethod
    async def new_data(self, hashes: tuple[str, ...] = ()) -> TempData:
        """A temporary writer; "md5" is always computed; `hashes` adds e.g. "sha256", "crc32", "crc32c"."""

    @abc.abstractmethod
    async def commit_object(
        self, bucket: str, key: str, data: TempData, spec: ObjectSpec, quota: tuple[int, int] = (0, 0)
    ) -> ObjectInfo:
        """Make finished `data` the current version at bucket/key, atomically (last commit wins): a new version
        where versioning is enabled, else the `null` version replaced. `quota` is (bucket limit, owner limit) in
        bytes, 0 for none; raises QuotaExceeded."""

    @abc.abstractmethod
    async def copy_object(
        self, source: ObjectReader, bucket: str, key: str, spec: ObjectSpec, quota: tuple[int, int] = (0, 0)
    ) -> ObjectInfo:
        """A new object with the bytes of an open object."""

    @abc.abstractmethod
    async def delete_object(
        self,
        bucket: str,
        key: str,
        version_id: str | None = None,
        bypass_governance: bool = False,
        if_latest: str | None = None,
        owner: tuple[str, str] = ("", ""),
    ) -> DeleteOutcome | None:
        """Without `version_id`: remove the object (versioning never enabled), or add a delete marker (enabled:
        a new version; suspended: the `null` version, replacing it). With it: remove that version for good,
        unless Object Lock forbids it (ObjectLocked). `if_latest`: act only while that is still the current
        version id; `owner` (account id, name) owns a delete marker added. None when nothing was there to delete."""

    @abc.abstractmethod
    async def set_object_acl(self, bucket: str, key: str, acl: Acl, version_id: str | None = None) -> None: ...

    @abc.abstractmethod
    async def set_object_tags(
        self, bucket: str, key: str, tags: dict[str, str], version_id: str | None = None
    ) -> ObjectInfo:
        """Replace the tag set of the current version (or of `version_id`); NoSuchKey / NoSuchVersion when it is
        missing, DeleteMarkerHit when it is a delete marker. The version as it is now."""

    @abc.abstractmethod
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
        """Change a version's retention ((mode, until); ("", 0) to remove) and/or legal hold. A COMPLIANCE
        retention is never shortened, weakened or removed; a GOVERNANCE one only with `bypass_governance`
        (else ObjectLocked)."""

    @abc.abstractmethod
    async def list_objects(self, bucket: str, prefix: str, after: str, limit: int) -> list[ObjectInfo]:
        """Current objects (no delete markers) with `prefix` and key > `after`, in key order, at most `limit`."""

    @abc.abstractmethod
    async def list_versions(
        self, bucket: str, prefix: str, key_marker: str, version_marker: str, limit: int
    ) -> list[ObjectInfo]:
        """Versions and delete markers with `prefix`, by key then newest first, after (key_marker, version_marker):
        with a version marker the versions of key_marker older than it, then later keys; without, keys after
        key_marker. NoSuchVersion if the version marker is not a version of key_marker. Each ObjectInfo carries
        the listing's fields only (key, version id, latest, delete marker, size, etag, last modified, owner): no
        headers, metadata, ACL grants, lock state or data; get_version has the rest."""

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
