"""Walrus's storage layer: buckets, objects and multipart uploads behind a small backend interface.

`StorageBackend` (base.py) is the interface; `EmbeddedBackend` (embedded.py) the default: data in files named
by generated ids under the service's state directory, metadata in aiosqlite. A later backend may keep data in
an external S3 / Ceph RGW.

The running service holds one backend as `WalrusService.storage`. What other parts of Walrus use (all async):

    info = await storage.head_object(bucket, key)       # ObjectInfo | None: the current version, never a marker
    info.version_id, info.is_latest, info.delete_marker # "null" unless written with versioning enabled
    await storage.get_version(bucket, key, version_id)  # any version, delete markers included (None: current)
    await storage.list_versions(bucket, prefix, key_marker, version_marker, limit)   # by key, newest first
    info.owner_id, info.owner_name, info.acl            # owner account and Acl(owner_id, owner_name, grants)
    info.size, info.etag, info.last_modified, info.content_type, info.meta, info.checksums

    bucket_info = await storage.get_bucket(bucket)      # BucketInfo | None (owner_id, acl, ...)
    await storage.get_bucket_config(bucket, "cors")     # a bucket-level configuration document (str) or None;
    await storage.put_bucket_config(bucket, kind, doc)  # kinds: policy, public-access-block, cors, tagging, logging

    async with await storage.open_object(bucket, key, version_id=None) as reader:
                                                         # raises NoSuchBucket / NoSuchKey / NoSuchVersion /
                                                         # DeleteMarkerHit (a NoSuchKey carrying the marker)
        reader.info                                      # the version opened: stays readable until closed,
                                                         # even if the object is overwritten or deleted meanwhile
        async for chunk in reader.iter_range(0, reader.info.size):
            ...
        reader.file_ranges(start, end)                   # [(file object, offset, count)] for sendfile

    storage.change_hooks.append(hook)                    # hook(ChangeEvent) (sync or async) runs after an object
                                                         # is overwritten (kind "overwrite") or deleted ("delete");
                                                         # event.bucket, event.key, event.old (the ObjectInfo gone)

    data = await storage.new_data(("sha256",))           # write a new object: stream, then commit atomically
    await data.write(chunk) ...; await data.finish()
    info = await storage.commit_object(bucket, key, data, ObjectSpec(owner_id, owner_name, acl, ...))
    (or `await data.abort()` to drop it)               # a new version if the bucket's versioning is Enabled

    await storage.delete_object(bucket, key, version_id=None)   # DeleteOutcome | None; ObjectLocked

Versions: a key maps to its versions, newest first; each is an object or a delete marker, has an id ("null" for
one written with versioning off or suspended), its own ACL and Object Lock state. Per-version features (tags,
ACLs) key on (bucket, key, version_id).

Access control is not this layer's job: check the ACL (services.walrus.s3.acl.allowed) before calling it.
"""

from services.walrus.storage.base import (
    ALL_USERS,
    AUTHENTICATED_USERS,
    CLOUD_GROUP,
    LOCK_MODES,
    VERSIONING_STATES,
    Acl,
    BucketExists,
    BucketInfo,
    BucketNotEmpty,
    ChangeEvent,
    ChangeHook,
    DefaultRetention,
    DeleteMarkerHit,
    DeleteOutcome,
    Grant,
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
    StorageError,
    TempData,
    UploadInfo,
)
from services.walrus.storage.embedded import EmbeddedBackend

__all__ = [
    "ALL_USERS",
    "AUTHENTICATED_USERS",
    "CLOUD_GROUP",
    "LOCK_MODES",
    "VERSIONING_STATES",
    "Acl",
    "BucketExists",
    "BucketInfo",
    "BucketNotEmpty",
    "ChangeEvent",
    "ChangeHook",
    "DefaultRetention",
    "DeleteMarkerHit",
    "DeleteOutcome",
    "EmbeddedBackend",
    "Grant",
    "InvalidBucketState",
    "InvalidPart",
    "NoSuchBucket",
    "NoSuchKey",
    "NoSuchUpload",
    "NoSuchVersion",
    "ObjectInfo",
    "ObjectLocked",
    "ObjectReader",
    "ObjectSpec",
    "PartInfo",
    "QuotaExceeded",
    "StorageBackend",
    "StorageError",
    "TempData",
    "UploadInfo",
]
