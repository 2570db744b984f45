"""Object operations: Put (streamed, digests checked), Get/Head (ranges, conditions, overrides, sendfile),
Delete, DeleteObjects, Copy, and the object ACL."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import logging
import zlib
from collections.abc import Mapping
from urllib.parse import unquote

import crc32c
from aiohttp import web

from services.walrus.images import sendfile
from services.walrus.s3 import access, object_lock, tag_sets
from services.walrus.s3 import acl as acls
from services.walrus.s3.body import Body
from services.walrus.s3.buckets import load_bucket
from services.walrus.s3.context import Ctx
from services.walrus.s3.errors import S3Error
from services.walrus.s3.names import check_bucket, check_key, check_new_key
from services.walrus.s3.storage_errors import to_s3
from services.walrus.s3.versioning import MAX_VERSION_ID, version_headers, version_param
from services.walrus.s3.xml import el, http_time, iso_time, parse_http_time, parse_xml, raw, read_xml_body, xml_response
from services.walrus.storage import (
    BucketInfo,
    DeleteOutcome,
    NoSuchBucket,
    NoSuchKey,
    NoSuchVersion,
    ObjectInfo,
    ObjectReader,
    ObjectSpec,
    StorageError,
    TempData,
)

log = logging.getLogger("koala.walrus.s3")
STORED_HEADERS = ("Content-Encoding", "Content-Disposition", "Cache-Control", "Content-Language", "Expires")
CHECKSUMS = ("crc32", "crc32c", "sha1", "sha256")
SMALL_BODY = 64 << 10  # bodies up to this size are read in one go (Body.whole)
OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}
SMALL_BODY = 64 << 10
STORAGE_CLASS = "STANDARD"  # the one storage class of Walrus's objects
CONDITIONS = ("If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since")
MAX_DELETE_KEYS = 1000


def quota(ctx: Ctx) -> tuple[int, int]:
    return ctx.app.limits.bucket_quota, ctx.app.limits.account_quota


def check_storage_class(value: str | None) -> None:
    """x-amz-storage-class: Walrus keeps every object in one storage class, STANDARD. Any other is refused with S3's
    InvalidStorageClass (400), as S3 refuses a class its bucket cannot hold (its one-class directory buckets do the
    same), rather than storing the object in a class it did not ask for."""
    if value is not None and value.strip() != STORAGE_CLASS:
        raise S3Error("InvalidStorageClass", StorageClassRequested=value[:64])


def spec_from_headers(ctx: Ctx, bucket: BucketInfo) -> ObjectSpec:
    check_storage_class(ctx.headers.get("x-amz-storage-class"))
    requester = ctx.requester
    owner_id = requester.account_id or "anonymous"
    owner_name = requester.account_name or "anonymous"
    meta: dict[str, str] = {}
    size = 0
    for name, value in ctx.headers.items():
        lower = name.lower()
        if lower.startswith("x-amz-meta-"):
            meta[lower[11:]] = value
            size += len(lower[11:].encode()) + len(value.encode())
    if size > ctx.app.limits.max_user_metadata:
        raise S3Error("MetadataTooLarge", Size=size, MaxSizeAllowed=ctx.app.limits.max_user_metadata)
    acl = acls.from_headers(ctx, owner_id, owner_name, (bucket.owner_id, bucket.owner_name)) or acls.canned(
        "private", owner_id, owner_name
    )
    stored = {name: ctx.headers[name] for name in STORED_HEADERS if name in ctx.headers}
    if "Content-Encoding" in stored:  # aws-chunked describes the upload, not the object
        encodings = [e.strip() for e in stored["Content-Encoding"].split(",") if e.strip().lower() != "aws-chunked"]
        if encodings:
            stored["Content-Encoding"] = ", ".join(encodings)
        else:
            del stored["Content-Encoding"]
    content_type = ctx.headers.get("Content-Type") or "binary/octet-stream"
    mode, until, hold = object_lock.lock_from_headers(ctx, bucket)
    tagging = ctx.headers.get("x-amz-tagging")
    tags = tag_sets.from_header(tagging) if tagging is not None else {}
    return ObjectSpec(owner_id, owner_name, acl, content_type[:1024], stored, meta, {}, mode, until, hold, tags)


def _content_md5(ctx: Ctx) -> bytes | None:
    value = ctx.headers.get("Content-MD5")
    if value is None:
        return None
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 16:
        raise S3Error("InvalidDigest", None, None, **{"Content-MD5": value[:64]})
    return digest


def requested_checksums(ctx: Ctx) -> tuple[dict[str, str | None], set[str]]:
    """{algorithm: expected base64 value, or None to compute}, and the algorithms whose value is trailing."""
    wanted: dict[str, str | None] = {}
    for algorithm in CHECKSUMS:
        value = ctx.headers.get(f"x-amz-checksum-{algorithm}")
        if value is not None:
            wanted[algorithm] = value.strip()
    trailing = set()
    for name in ctx.headers.get("x-amz-trailer", "").split(","):
        name = name.strip().lower()
        if name.startswith("x-amz-checksum-") and name[15:] in CHECKSUMS:
            trailing.add(name[15:])
            wanted[name[15:]] = None
        elif name:
            raise S3Error("InvalidRequest", f"unsupported trailer {name}")
    for header in ("x-amz-sdk-checksum-algorithm", "x-amz-checksum-algorithm"):
        algorithm = ctx.headers.get(header, "").strip().lower()
        if algorithm:
            if algorithm not in CHECKSUMS:
                raise S3Error("InvalidRequest", f"unsupported checksum algorithm {algorithm}")
            wanted.setdefault(algorithm, None)
    if len(wanted) > 1:
        raise S3Error("InvalidRequest", "Expecting a single x-amz-checksum- header")
    return wanted, trailing


LOCK_HEADERS = ("x-amz-object-lock-mode", "x-amz-object-lock-retain-until-date", "x-amz-object-lock-legal-hold")


def require_integrity_for_lock(ctx: Ctx, spec: ObjectSpec) -> None:
    """As AWS requires: an upload that sets Object Lock (in its headers, or by the bucket's default retention) carries
    Content-MD5 or an x-amz-checksum (a value, a trailer or the SDK's algorithm), so that the bytes a retention
    will keep for years are the ones the client sent."""
    if not (spec.lock_mode or spec.legal_hold or any(name in ctx.headers for name in LOCK_HEADERS)):
        return
    if "Content-MD5" in ctx.headers or requested_checksums(ctx)[0]:
        return
    raise S3Error(
        "InvalidRequest",
        "Content-MD5 OR x-amz-checksum- HTTP header is required for Put Object requests with Object Lock parameters",
    )


async def receive(ctx: Ctx, max_size: int) -> tuple[TempData, dict[str, str]]:
    """Stream the request body into temporary storage, checking every digest the client sent."""
    md5 = _content_md5(ctx)
    wanted, trailing = requested_checksums(ctx)
    body = Body(ctx, max_size, check_sha256=False)
    signed_sha256 = body.hex_payload()  # x-amz-content-sha256 is checked with the other digests, in a thread
    hashes = tuple(wanted) + (("sha256",) if signed_sha256 and "sha256" not in wanted else ())
    data = await ctx.app.storage.new_data(hashes)
    try:
        small = await body.whole(SMALL_BODY)
        if small is not None:
            await data.write(small)
        else:
            async for chunk in body.chunks():
                await data.write(chunk)
        await data.finish()
        if signed_sha256 and not hmac.compare_digest(data.digest("sha256").hex(), ctx.payload.lower()):
            raise S3Error(
                "XAmzContentSHA256Mismatch",
                ClientComputedContentSHA256=ctx.payload,
                S3ComputedContentSHA256=data.digest("sha256").hex(),
            )
        if md5 is not None and not hmac.compare_digest(md5, data.digest("md5")):
            raise S3Error("BadDigest", ExpectedDigest=base64.b64encode(md5).decode())
        computed = {}
        for algorithm, expected in wanted.items():
            value = base64.b64encode(data.digest(algorithm)).decode()
            if algorithm in trailing:
                expected = body.trailers.get(f"x-amz-checksum-{algorithm}")
                if expected is None:
                    raise S3Error("InvalidRequest", f"the trailing x-amz-checksum-{algorithm} is missing")
            if expected is not None and not hmac.compare_digest(expected.encode(), value.encode()):
                raise S3Error(
                    "BadDigest", f"The {algorithm.upper()} you specified did not match the calculated checksum."
                )
            computed[algorithm] = value
    except BaseException:
        await data.abort()
        raise
    return data, computed


def _checksum_headers(checksums: dict[str, str]) -> dict[str, str]:
    return {f"x-amz-checksum-{name}": value for name, value in checksums.items()}


async def put_object(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    check_new_key(ctx.key)
    await access.check(ctx, "s3:PutObject", bucket, "WRITE", key=ctx.key)
    spec = spec_from_headers(ctx, bucket)
    vetted = await access.vet_acl(ctx, bucket.name, spec.acl)
    if vetted is not spec.acl:
        spec = dataclasses.replace(spec, acl=vetted)
    require_integrity_for_lock(ctx, spec)
    await check_write_conditions(ctx)
    data, checksums = await receive(ctx, ctx.app.limits.max_object_size)
    try:
        await check_write_conditions(ctx)  # again: another writer may have come in while the body arrived
    except BaseException:
        await data.abort()
        raise
    if checksums:
        spec = dataclasses.replace(spec, checksums=checksums)
    info = await commit(ctx, data, spec)
    headers = {"ETag": f'"{info.etag}"', **_checksum_headers(checksums), **version_headers(bucket, info)}
    return web.Response(headers=headers)


async def check_write_conditions(ctx: Ctx) -> None:
    """Conditional writes: If-None-Match: * (only if there is no object yet) and If-Match: <etag> (only over
    that object); 412 PreconditionFailed, or NoSuchKey for If-Match on a missing key."""
    if_match, if_none_match = ctx.headers.get("If-Match"), ctx.headers.get("If-None-Match")
    if if_match is None and if_none_match is None:
        return
    if if_none_match is not None and if_none_match.strip() != "*":
        raise S3Error("NotImplemented", "If-None-Match on a write takes only *")
    current = await ctx.app.storage.head_object(ctx.bucket, ctx.key)
    if if_none_match is not None and current is not None:
        raise S3Error("PreconditionFailed", Condition="If-None-Match")
    if if_match is not None:
        if current is None:
            raise S3Error("NoSuchKey", Key=ctx.key)
        if not _etag_matches(if_match, current.etag):
            raise S3Error("PreconditionFailed", Condition="If-Match")


async def commit(ctx: Ctx, data: TempData, spec: ObjectSpec) -> ObjectInfo:
    try:
        return await ctx.app.storage.commit_object(ctx.bucket, ctx.key, data, spec, quota(ctx))
    finally:
        await data.abort()  # no-op once committed


READ_ACTIONS = {"READ": "s3:GetObject", "READ_ACP": "s3:GetObjectAcl", "WRITE_ACP": "s3:PutObjectAcl"}
VERSION_ACTIONS = {
    "READ": "s3:GetObjectVersion",
    "READ_ACP": "s3:GetObjectVersionAcl",
    "WRITE_ACP": "s3:PutObjectVersionAcl",
}


async def open_readable(
    ctx: Ctx,
    bucket_name: str,
    key: str,
    permission: str = "READ",
    version_id: str | None = None,
    actions: tuple[str, str] | None = None,
) -> ObjectReader:
    """An open object (version) the requester may read; NoSuchKey only to those who may list the bucket.
    `actions`: the policy actions checked (for the current version, for a named one) when not the ones
    `permission` implies."""
    storage = ctx.app.storage
    bucket = await storage.get_bucket(bucket_name)
    if bucket is None:
        raise S3Error("NoSuchBucket", BucketName=bucket_name)
    try:
        reader = await storage.open_object(bucket_name, key, version_id)
    except (NoSuchKey, NoSuchBucket, NoSuchVersion) as err:
        if not await access.allowed(ctx, "s3:ListBucket", bucket, "READ"):
            raise S3Error("AccessDenied") from None
        raise await to_s3(err, ctx, version_named=version_id is not None) from None
    try:
        if actions is not None:
            action = actions[1] if version_id is not None else actions[0]
        else:
            action = (VERSION_ACTIONS if version_id is not None else READ_ACTIONS)[permission]
        await access.check(ctx, action, bucket, permission, reader.info.acl, key, reader.info.tags)
    except BaseException:
        await reader.close()
        raise
    return reader


def _etag_matches(header: str, etag: str) -> bool:
    values = [v.strip().removeprefix("W/").strip('"') for v in header.split(",")]
    return "*" in values or etag in values


def check_conditions(headers: Mapping[str, str], info: ObjectInfo, prefix: str = "") -> None:
    """If-Match & co (or x-amz-copy-source-if-* with `prefix`): 412, or 304 for reads."""
    if not prefix and not any(name in headers for name in CONDITIONS):
        return  # the usual read: no conditions
    modified = int(info.last_modified)
    copy = bool(prefix)
    if_match = headers.get(f"{prefix}If-Match")
    if_none_match = headers.get(f"{prefix}If-None-Match")
    since = parse_http_time(headers.get(f"{prefix}If-Modified-Since", "") or "")
    unmodified = parse_http_time(headers.get(f"{prefix}If-Unmodified-Since", "") or "")
    if if_match is not None:
        if not _etag_matches(if_match, info.etag):
            raise S3Error("PreconditionFailed", Condition=f"{prefix}If-Match")
    elif unmodified is not None and modified > unmodified:
        raise S3Error("PreconditionFailed", Condition=f"{prefix}If-Unmodified-Since")
    not_modified = None
    if if_none_match is not None:
        if _etag_matches(if_none_match, info.etag):
            not_modified = f"{prefix}If-None-Match"
    elif since is not None and modified <= since:
        not_modified = f"{prefix}If-Modified-Since"
    if not_modified:
        if copy:
            raise S3Error("PreconditionFailed", Condition=not_modified)
        err = S3Error("NotModified")
        err.headers = {"ETag": f'"{info.etag}"', "Last-Modified": http_time(info.last_modified)}
        raise err


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of a single `bytes=` range; None to send everything (absent or unparsable, as S3 does)."""
    if not value or not value.startswith("bytes=") or "," in value:
        return None
    first, dash, last = value[6:].strip().partition("-")
    if not dash:
        return None
    try:
        if not first:
            length = int(last)
            if length <= 0 or size == 0:
                raise _invalid_range(value, size)
            return max(0, size - length), size
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start < 0 or (last and end <= start):
        return None
    if start >= size:
        raise _invalid_range(value, size)
    return start, min(end, size)


def _invalid_range(value: str, size: int) -> S3Error:
    err = S3Error("InvalidRange", ActualObjectSize=size, RangeRequested=value[:100])
    err.headers = {"Content-Range": f"bytes */{size}"}
    return err


_stored_headers: dict[int, tuple[ObjectInfo, bool, dict[str, str]]] = {}  # id(info) -> (info, versioned, headers)


def object_headers(info: ObjectInfo, ctx: Ctx, bucket: BucketInfo | None) -> dict[str, str]:
    """The headers GET and HEAD answer with for a version (a fresh dict: callers add to it). What they owe to the
    version alone is remembered for that ObjectInfo (a frozen snapshot: a changed version is a new one)."""
    versioned = bucket is not None and bool(bucket.versioning)
    memo = _stored_headers.get(id(info))
    if memo is not None and memo[0] is info and memo[1] == versioned:
        headers = dict(memo[2])
    else:
        headers = _version_headers(info, bucket)
        if len(_stored_headers) >= 4096:
            _stored_headers.clear()
        _stored_headers[id(info)] = (info, versioned, dict(headers))  # holds `info`: its id is not reused meanwhile
    if len(ctx.query) > 0:
        for query_name, header in OVERRIDES.items():
            if query_name in ctx.query:
                headers[header] = ctx.query[query_name]
    return headers


def _version_headers(info: ObjectInfo, bucket: BucketInfo | None) -> dict[str, str]:
    headers = {
        "ETag": f'"{info.etag}"',
        "Last-Modified": http_time(info.last_modified),
        "Content-Type": info.content_type,
        "Accept-Ranges": "bytes",
        **info.headers,
        **version_headers(bucket, info),
        **object_lock.lock_headers(info),
        **tag_sets.count_header(info.tags),
    }
    for name, value in info.meta.items():
        headers[f"x-amz-meta-{name}"] = value
    if info.parts:
        headers["x-amz-mp-parts-count"] = str(len(info.parts))
    return headers


async def get_object(ctx: Ctx) -> web.StreamResponse:
    check_bucket(ctx.bucket)
    check_key(ctx.key)
    reader = await open_readable(ctx, ctx.bucket, ctx.key, version_id=version_param(ctx))
    try:
        info = reader.info
        check_conditions(ctx.headers, info)
        headers = object_headers(info, ctx, await ctx.app.storage.get_bucket(ctx.bucket))
        start, end, status = 0, info.size, 200
        part_number = ctx.query.get("partNumber")
        if part_number is not None:
            start, end = _part_range(info, part_number)
            status = 206 if (start, end) != (0, info.size) or info.parts else 200
        else:
            wanted = parse_range(ctx.headers.get("Range"), info.size)
            if wanted is not None:
                start, end = wanted
                status = 206
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
        elif ctx.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED":
            headers.update(_checksum_headers(info.checksums))
        headers["Content-Length"] = str(end - start)
        if ctx.request.method == "HEAD":
            return web.Response(status=status, headers=headers)
        if end - start <= SMALL_BODY:
            body = await reader.read_small()
            del headers["Content-Length"]
            return web.Response(status=status, body=body[start:end], headers=headers)
        return await _stream(ctx, reader, status, headers, start, end)
    finally:
        await reader.close()


async def head_object(ctx: Ctx) -> web.StreamResponse:
    """GetObject's answer without the body (get_object leaves it out for HEAD)."""
    return await get_object(ctx)


def _part_range(info: ObjectInfo, value: str) -> tuple[int, int]:
    try:
        number = int(value)
    except ValueError:
        raise S3Error("InvalidArgument", "partNumber must be an integer", ArgumentName="partNumber") from None
    parts = info.parts or (info.size,)
    if not 1 <= number <= 10000:
        raise S3Error(
            "InvalidArgument",
            "Part number must be an integer between 1 and 10000, inclusive",
            ArgumentName="partNumber",
        )
    if number > len(parts):
        raise S3Error("InvalidPartNumber", "The requested partnumber is not satisfiable", status=416)
    start = sum(parts[: number - 1])
    return start, start + parts[number - 1]


async def _stream(
    ctx: Ctx, reader: ObjectReader, status: int, headers: dict[str, str], start: int, end: int
) -> web.StreamResponse:
    """Send [start, end) with sendfile where the backend has files, else in chunks; memory stays flat."""
    del headers["Content-Length"]
    response = web.StreamResponse(status=status, headers={**headers, **ctx.response_headers})
    response.content_length = end - start
    response.headers["x-amz-request-id"] = ctx.request_id
    pieces = reader.file_ranges(start, end)
    request = ctx.request
    await response.prepare(request)
    try:
        if pieces is not None:  # the kernel's sendfile from a worker thread (any event loop, uvloop too)
            for handle, offset, count in pieces:
                await sendfile.send_range(request, response, handle, offset, offset + count)
        else:  # a backend without files: read and write in chunks
            async for chunk in reader.iter_range(start, end):
                await response.write(chunk)
        await response.write_eof()
    except ConnectionError:
        raise
    except Exception as err:
        # The status line is out: all that is left is to cut the connection, which the client sees as a body
        # shorter than its Content-Length.
        log.error("%s: streaming %s/%s failed: %s", ctx.request_id, ctx.bucket, ctx.key, err)
        raise ConnectionResetError(str(err)) from err
    return response


async def delete_object(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    check_key(ctx.key)
    await access.check(
        ctx, "s3:DeleteObjectVersion" if ctx.query.get("versionId") else "s3:DeleteObject", bucket, "WRITE", key=ctx.key
    )
    outcome = await remove(ctx, bucket, ctx.key, version_param(ctx))
    return web.Response(status=204, headers=_outcome_headers(bucket, outcome))


async def remove(ctx: Ctx, bucket: BucketInfo, key: str, version_id: str | None) -> DeleteOutcome | None:
    """Delete an object or one version of it, as the requester may (Object Lock, bypass governance)."""
    requester = ctx.requester
    return await ctx.app.storage.delete_object(
        bucket.name,
        key,
        version_id,
        bypass_governance=await object_lock.may_bypass_governance(ctx, bucket, key),
        owner=(requester.account_id or "anonymous", requester.account_name or "anonymous"),
    )


def _outcome_headers(bucket: BucketInfo, outcome: DeleteOutcome | None) -> dict[str, str]:
    if outcome is None or (outcome.version_id == "null" and not bucket.versioning):
        return {}
    headers = {"x-amz-version-id": outcome.version_id}
    if outcome.delete_marker:
        headers["x-amz-delete-marker"] = "true"
    return headers


def _verify_body_digests(ctx: Ctx, body: bytes) -> None:
    md5 = _content_md5(ctx)
    if md5 is not None and not hmac.compare_digest(md5, hashlib.md5(body).digest()):
        raise S3Error("BadDigest")
    for algorithm in CHECKSUMS:
        expected = ctx.headers.get(f"x-amz-checksum-{algorithm}")
        if expected is None:
            continue
        if algorithm == "crc32":
            digest = zlib.crc32(body).to_bytes(4, "big")
        elif algorithm == "crc32c":
            digest = crc32c.crc32c(body).to_bytes(4, "big")
        else:
            digest = hashlib.new(algorithm, body).digest()
        if base64.b64encode(digest).decode() != expected.strip():
            raise S3Error("BadDigest", f"The {algorithm.upper()} you specified did not match the calculated checksum.")


async def _small_body(ctx: Ctx) -> bytes:
    """A small XML body, with its x-amz-content-sha256 and Content-MD5 / checksum headers checked."""
    body = await read_xml_body(ctx.request)
    if len(ctx.payload) == 64 and not hmac.compare_digest(hashlib.sha256(body).hexdigest(), ctx.payload.lower()):
        raise S3Error("XAmzContentSHA256Mismatch")
    _verify_body_digests(ctx, body)
    return body


async def delete_objects(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    root = parse_xml(await _small_body(ctx))
    if root.tag != "Delete":
        raise S3Error("MalformedXML")
    quiet = (root.findtext("Quiet") or "").strip().lower() == "true"
    nodes = root.findall("Object")
    if not nodes or len(nodes) > MAX_DELETE_KEYS:
        raise S3Error("MalformedXML", f"between 1 and {MAX_DELETE_KEYS} objects per request")
    results = []
    for node in nodes:
        key = node.findtext("Key")
        version_id = node.findtext("VersionId")
        if key is None or (version_id is not None and not 0 < len(version_id) <= MAX_VERSION_ID):
            raise S3Error("MalformedXML")
        named = [el("Key", key)] + ([el("VersionId", version_id)] if version_id is not None else [])
        try:
            check_key(key)
            action = "s3:DeleteObjectVersion" if version_id is not None else "s3:DeleteObject"
            await access.check(ctx, action, bucket, "WRITE", key=key)
            outcome = await remove(ctx, bucket, key, version_id)
        except (S3Error, StorageError) as caught:
            err = caught if isinstance(caught, S3Error) else await to_s3(caught, ctx)
            results.append(el("Error", raw(*named, el("Code", err.code), el("Message", err.message))))
            continue
        if not quiet:
            if outcome is not None and outcome.delete_marker:
                named += [el("DeleteMarker", True), el("DeleteMarkerVersionId", outcome.version_id)]
            results.append(el("Deleted", raw(*named)))
    return xml_response("DeleteResult", "".join(results))


def parse_copy_source(value: str) -> tuple[str, str, str | None]:
    """(bucket, key, version id or None) of x-amz-copy-source (`/bucket/key?versionId=...`)."""
    source, _, version = value.strip().partition("?versionId=")
    source = unquote(source)
    if "?versionId=" in value and not 0 < len(version) <= MAX_VERSION_ID:
        raise S3Error("InvalidArgument", "Invalid version id specified", ArgumentName="x-amz-copy-source")
    bucket, _, key = source.lstrip("/").partition("/")
    if not bucket or not key:
        raise S3Error(
            "InvalidArgument",
            "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
            ArgumentName="x-amz-copy-source",
        )
    check_bucket(bucket)
    check_key(key)
    return bucket, key, (version or None)


async def copy_object(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    check_new_key(ctx.key)
    await access.check(ctx, "s3:PutObject", bucket, "WRITE", key=ctx.key)
    source_bucket, source_key, source_version = parse_copy_source(ctx.headers["x-amz-copy-source"])
    directive = ctx.headers.get("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise S3Error("InvalidArgument", "Unknown metadata directive.", ArgumentName="x-amz-metadata-directive")
    tag_directive = ctx.headers.get("x-amz-tagging-directive", "COPY").upper()
    if tag_directive not in ("COPY", "REPLACE"):
        raise S3Error("InvalidArgument", "Unknown tagging directive.", ArgumentName="x-amz-tagging-directive")
    reader = await open_readable(ctx, source_bucket, source_key, version_id=source_version)
    try:
        source = reader.info
        check_conditions(ctx.headers, source, prefix="x-amz-copy-source-")
        if source.size > ctx.app.limits.max_object_size:
            raise S3Error("InvalidRequest", "The specified copy source is larger than the maximum allowable size")
        new = spec_from_headers(ctx, bucket)
        new = dataclasses.replace(new, acl=await access.vet_acl(ctx, bucket.name, new.acl))
        same = (source_bucket, source_key, source_version) in (
            (ctx.bucket, ctx.key, None),
            (ctx.bucket, ctx.key, source.version_id),
        ) and source.is_latest
        if same and directive == "COPY" and "x-amz-acl" not in ctx.headers:
            raise S3Error(
                "InvalidRequest",
                "This copy request is illegal because it is trying to copy an object to itself without changing "
                "the object's metadata, storage class, website redirect location or encryption attributes.",
            )
        if directive == "COPY":
            spec = dataclasses.replace(
                new,
                content_type=source.content_type,
                headers=source.headers,
                meta=source.meta,
                checksums=source.checksums,
            )
        else:
            spec = dataclasses.replace(new, checksums=source.checksums)
        if tag_directive == "COPY":  # the source's tags, whatever x-amz-tagging says (as S3 does)
            spec = dataclasses.replace(spec, tags=source.tags)
        info = await ctx.app.storage.copy_object(reader, ctx.bucket, ctx.key, spec, quota(ctx))
    finally:
        await reader.close()
    body = el("LastModified", iso_time(info.last_modified)) + el("ETag", f'"{info.etag}"')
    headers = version_headers(bucket, info)
    source_bucket_info = await ctx.app.storage.get_bucket(source_bucket)
    if "x-amz-version-id" in version_headers(source_bucket_info, source):
        headers["x-amz-copy-source-version-id"] = source.version_id
    return xml_response("CopyObjectResult", body, headers=headers)


async def get_object_acl(ctx: Ctx) -> web.Response:
    check_bucket(ctx.bucket)
    check_key(ctx.key)
    reader = await open_readable(ctx, ctx.bucket, ctx.key, "READ_ACP", version_param(ctx))
    await reader.close()
    headers = version_headers(await ctx.app.storage.get_bucket(ctx.bucket), reader.info)
    return xml_response("AccessControlPolicy", acls.to_xml(reader.info.acl), headers=headers)


async def put_object_acl(ctx: Ctx) -> web.Response:
    check_bucket(ctx.bucket)
    check_key(ctx.key)
    bucket = await load_bucket(ctx)
    version_id = version_param(ctx)
    reader = await open_readable(ctx, ctx.bucket, ctx.key, "WRITE_ACP", version_id)
    await reader.close()
    info = reader.info
    new = acls.from_headers(ctx, info.owner_id, info.owner_name, (bucket.owner_id, bucket.owner_name))
    body = await read_xml_body(ctx.request)
    if new is None:
        if not body.strip():
            raise S3Error("MissingSecurityHeader", "an ACL in headers or in the body is required")
        new = acls.from_xml(body, info.acl)
    new = await access.vet_acl(ctx, bucket.name, new)
    await ctx.app.storage.set_object_acl(ctx.bucket, ctx.key, new, version_id)
    return web.Response()
