"""The one mapping from the storage layer's errors to S3's: the front door (app.py) applies it to any StorageError a
handler lets through, so a handler catches a storage error only where S3 answers differently in its case."""

from __future__ import annotations

from services.walrus.s3.context import Ctx
from services.walrus.s3.errors import S3Error
from services.walrus.s3.versioning import no_such_version, version_headers
from services.walrus.s3.xml import http_time
from services.walrus.storage import (
    BucketExists,
    BucketNotEmpty,
    DeleteMarkerHit,
    InvalidBucketState,
    InvalidPart,
    NoSuchBucket,
    NoSuchKey,
    NoSuchUpload,
    NoSuchVersion,
    ObjectLocked,
    QuotaExceeded,
    StorageError,
)

OBJECT_LOCKED_MESSAGE = "Access Denied because object protected by object lock."


def object_locked() -> S3Error:
    return S3Error("AccessDenied", OBJECT_LOCKED_MESSAGE)


def _named(err: StorageError, fallback: str) -> str:
    """What the error is about (a bucket, key, version or upload id), as the backend raised it."""
    return str(err.args[0]) if err.args and err.args[0] else fallback


async def to_s3(err: StorageError, ctx: Ctx, version_named: bool | None = None) -> S3Error:
    """The S3 error for `err` raised while serving `ctx`. `version_named`: whether the request named the version
    that turned out to be a delete marker (default: whether its query has a versionId)."""
    if isinstance(err, DeleteMarkerHit):  # 404 for the current version, 405 when named (as S3 answers)
        if version_named is None:
            version_named = ctx.query.get("versionId") is not None
        error = S3Error("MethodNotAllowed") if version_named else S3Error("NoSuchKey", Key=err.info.key)
        bucket = await ctx.app.storage.get_bucket(err.info.bucket)
        error.headers = {**version_headers(bucket, err.info), "Last-Modified": http_time(err.info.last_modified)}
        return error
    if isinstance(err, NoSuchBucket):
        return S3Error("NoSuchBucket", BucketName=_named(err, ctx.bucket))
    if isinstance(err, NoSuchKey):
        return S3Error("NoSuchKey", Key=_named(err, ctx.key))
    if isinstance(err, NoSuchVersion):
        return no_such_version(_named(err, ctx.query.get("versionId", "")))
    if isinstance(err, NoSuchUpload):
        return S3Error("NoSuchUpload", UploadId=_named(err, ctx.query.get("uploadId", "")))
    if isinstance(err, InvalidPart):
        return S3Error("InvalidPart", UploadId=ctx.query.get("uploadId", ""))
    if isinstance(err, BucketNotEmpty):
        return S3Error("BucketNotEmpty", BucketName=_named(err, ctx.bucket))
    if isinstance(err, BucketExists):
        code = "BucketAlreadyOwnedByYou" if err.owner_id == ctx.requester.account_id else "BucketAlreadyExists"
        return S3Error(code, BucketName=ctx.bucket)
    if isinstance(err, QuotaExceeded):
        return S3Error("QuotaExceeded", f"Your request would exceed the {err}.")
    if isinstance(err, ObjectLocked):
        return object_locked()
    if isinstance(err, InvalidBucketState):
        return S3Error("InvalidBucketState", str(err), status=409)
    return S3Error("InternalError")
