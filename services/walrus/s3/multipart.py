"""Multipart uploads: Create, UploadPart, UploadPartCopy, Complete, Abort, ListParts, ListMultipartUploads."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import replace

from aiohttp import web

from services.walrus.s3 import access
from services.walrus.s3.buckets import _encoder, load_bucket, owner_xml
from services.walrus.s3.context import Ctx
from services.walrus.s3.errors import S3Error
from services.walrus.s3.names import check_key, check_new_key
from services.walrus.s3.objects import (
    _small_body,
    check_conditions,
    open_readable,
    parse_copy_source,
    quota,
    receive,
    requested_checksums,
    require_integrity_for_lock,
    spec_from_headers,
)
from services.walrus.s3.versioning import version_headers
from services.walrus.s3.xml import el, iso_time, parse_xml, raw, xml_response
from services.walrus.storage import UploadInfo

MAX_PARTS = 10000


async def create_multipart_upload(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    check_new_key(ctx.key)
    await access.check(ctx, "s3:PutObject", bucket, "WRITE", key=ctx.key)
    spec = spec_from_headers(ctx, bucket)
    spec = replace(spec, acl=await access.vet_acl(ctx, bucket.name, spec.acl))
    wanted, _ = requested_checksums(ctx)
    algorithm = next(iter(wanted), "")
    upload_id = await ctx.app.storage.create_upload(ctx.bucket, ctx.key, spec, algorithm)
    headers = {"x-amz-checksum-algorithm": algorithm.upper()} if algorithm else {}
    body = el("Bucket", ctx.bucket) + el("Key", ctx.key) + el("UploadId", upload_id)
    return xml_response("InitiateMultipartUploadResult", body, headers=headers)


async def _upload(ctx: Ctx, action: str = "s3:PutObject", permission: str = "WRITE") -> UploadInfo:
    bucket = await load_bucket(ctx)
    check_key(ctx.key)
    await access.check(ctx, action, bucket, permission, key=ctx.key)
    upload_id = ctx.query.get("uploadId", "")
    upload = await ctx.app.storage.get_upload(upload_id) if len(upload_id) <= 128 else None
    if upload is None or upload.bucket != ctx.bucket or upload.key != ctx.key:
        raise S3Error("NoSuchUpload", UploadId=upload_id[:128])
    return upload


def _part_number(ctx: Ctx) -> int:
    value = ctx.query.get("partNumber", "")
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_PARTS:
        raise S3Error(
            "InvalidArgument",
            "Part number must be an integer between 1 and 10000, inclusive",
            ArgumentName="partNumber",
            ArgumentValue=value[:20],
        )
    return number


async def upload_part(ctx: Ctx) -> web.Response:
    upload = await _upload(ctx)
    number = _part_number(ctx)
    require_integrity_for_lock(ctx, upload.spec)  # a part of an object that Object Lock will keep
    data, checksums = await receive(ctx, ctx.app.limits.max_part_size)
    try:
        part = await ctx.app.storage.commit_part(upload.upload_id, number, data, checksums)
    finally:
        await data.abort()
    headers = {"ETag": f'"{part.etag}"', **{f"x-amz-checksum-{k}": v for k, v in checksums.items()}}
    return web.Response(headers=headers)


async def upload_part_copy(ctx: Ctx) -> web.Response:
    upload = await _upload(ctx)
    number = _part_number(ctx)
    source_bucket, source_key, source_version = parse_copy_source(ctx.headers["x-amz-copy-source"])
    reader = await open_readable(ctx, source_bucket, source_key, version_id=source_version)
    try:
        info = reader.info
        check_conditions(ctx.headers, info, prefix="x-amz-copy-source-")
        start, end = 0, info.size
        wanted = ctx.headers.get("x-amz-copy-source-range")
        if wanted is not None:
            first, dash, last = wanted.removeprefix("bytes=").partition("-")
            try:
                start, end = int(first), int(last) + 1
            except ValueError:
                raise S3Error(
                    "InvalidArgument",
                    "The x-amz-copy-source-range value must be of the form bytes=first-last",
                    ArgumentName="x-amz-copy-source-range",
                ) from None
            if not dash or start < 0 or end <= start or end > info.size:
                raise S3Error("InvalidRange", ActualObjectSize=info.size, RangeRequested=wanted[:100])
        if end - start > ctx.app.limits.max_part_size:
            raise S3Error("EntityTooLarge")
        data = await ctx.app.storage.new_data()
        try:
            async for chunk in reader.iter_range(start, end):
                await data.write(chunk)
            await data.finish()
            part = await ctx.app.storage.commit_part(upload.upload_id, number, data, {})
        finally:
            await data.abort()
    finally:
        await reader.close()
    body = el("ETag", f'"{part.etag}"') + el("LastModified", iso_time(part.last_modified))
    headers = {}
    if "x-amz-version-id" in version_headers(await ctx.app.storage.get_bucket(source_bucket), info):
        headers["x-amz-copy-source-version-id"] = info.version_id
    return xml_response("CopyPartResult", body, headers=headers)


async def complete_multipart_upload(ctx: Ctx) -> web.Response:
    upload = await _upload(ctx)
    root = parse_xml(await _small_body(ctx))
    if root.tag != "CompleteMultipartUpload":
        raise S3Error("MalformedXML")
    wanted: list[tuple[int, str]] = []
    for node in root.findall("Part"):
        try:
            number = int((node.findtext("PartNumber") or "").strip())
        except ValueError:
            raise S3Error("MalformedXML") from None
        etag = (node.findtext("ETag") or "").strip().strip('"')
        if wanted and number <= wanted[-1][0]:
            raise S3Error("InvalidPartOrder", UploadId=upload.upload_id)
        wanted.append((number, etag))
    if not wanted or len(wanted) > MAX_PARTS:
        raise S3Error("MalformedXML", "a multipart upload needs 1 to 10000 parts")
    stored = {p.part_number: p for p in await ctx.app.storage.list_parts(upload.upload_id)}
    digests = b""
    checksums: list[bytes] = []
    for index, (number, etag) in enumerate(wanted):
        part = stored.get(number)
        if part is None or part.etag != etag:
            raise S3Error("InvalidPart", UploadId=upload.upload_id, PartNumber=number, ETag=etag)
        if index < len(wanted) - 1 and part.size < ctx.app.limits.min_part_size:
            raise S3Error(
                "EntityTooSmall",
                ProposedSize=part.size,
                MinSizeAllowed=ctx.app.limits.min_part_size,
                PartNumber=number,
                ETag=etag,
            )
        digests += bytes.fromhex(part.etag)
        if upload.checksum_algorithm and upload.checksum_algorithm in part.checksums:
            checksums.append(base64.b64decode(part.checksums[upload.checksum_algorithm]))
    final_etag = f"{hashlib.md5(digests).hexdigest()}-{len(wanted)}"
    composite = {}
    if upload.checksum_algorithm in ("sha1", "sha256") and len(checksums) == len(wanted):
        value = hashlib.new(upload.checksum_algorithm, b"".join(checksums)).digest()
        composite[upload.checksum_algorithm] = f"{base64.b64encode(value).decode()}-{len(wanted)}"
    info = await ctx.app.storage.complete_upload(upload.upload_id, wanted, final_etag, composite, quota(ctx))
    location = f"http://{ctx.request.host}/{ctx.bucket}/{ctx.key}"
    body = el("Location", location) + el("Bucket", ctx.bucket) + el("Key", ctx.key) + el("ETag", f'"{info.etag}"')
    headers = version_headers(await ctx.app.storage.get_bucket(ctx.bucket), info)
    return xml_response("CompleteMultipartUploadResult", body, headers=headers)


async def abort_multipart_upload(ctx: Ctx) -> web.Response:
    upload = await _upload(ctx, "s3:AbortMultipartUpload")
    await ctx.app.storage.abort_upload(upload.upload_id)
    return web.Response(status=204)


def _int_param(ctx: Ctx, name: str, default: int, high: int) -> int:
    value = ctx.query.get(name, str(default))
    try:
        number = int(value)
    except ValueError:
        raise S3Error("InvalidArgument", f"{name} must be an integer", ArgumentName=name) from None
    if number < 0:
        raise S3Error("InvalidArgument", f"{name} must not be negative", ArgumentName=name)
    return min(number, high)


async def list_parts(ctx: Ctx) -> web.Response:
    upload = await _upload(ctx, "s3:ListMultipartUploadParts", "READ")
    marker = _int_param(ctx, "part-number-marker", 0, MAX_PARTS)
    max_parts = _int_param(ctx, "max-parts", 1000, 1000)
    parts = await ctx.app.storage.list_parts(upload.upload_id, marker, max_parts + 1)
    truncated = len(parts) > max_parts
    parts = parts[:max_parts]
    items = [
        el("Bucket", ctx.bucket),
        el("Key", ctx.key),
        el("UploadId", upload.upload_id),
        el("Initiator", raw(el("ID", upload.owner_id), el("DisplayName", upload.owner_name))),
        owner_xml(upload.owner_id, upload.owner_name),
        el("StorageClass", "STANDARD"),
        el("PartNumberMarker", marker),
        el("NextPartNumberMarker", parts[-1].part_number if parts else marker),
        el("MaxParts", max_parts),
        el("IsTruncated", truncated),
    ]
    if upload.checksum_algorithm:
        items.append(el("ChecksumAlgorithm", upload.checksum_algorithm.upper()))
    for part in parts:
        inner = [
            el("PartNumber", part.part_number),
            el("LastModified", iso_time(part.last_modified)),
            el("ETag", f'"{part.etag}"'),
            el("Size", part.size),
        ]
        inner += [el(f"Checksum{name.upper()}", value) for name, value in part.checksums.items()]
        items.append(el("Part", raw(*inner)))
    return xml_response("ListPartsResult", "".join(items))


async def list_multipart_uploads(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:ListBucketMultipartUploads", bucket, "READ")
    encode = _encoder(ctx)
    prefix = ctx.query.get("prefix", "")
    key_marker = ctx.query.get("key-marker", "")
    id_marker = ctx.query.get("upload-id-marker", "") if key_marker else ""
    max_uploads = _int_param(ctx, "max-uploads", 1000, 1000)
    found = await ctx.app.storage.list_uploads(ctx.bucket, prefix, key_marker, id_marker, max_uploads + 1)
    truncated = len(found) > max_uploads
    found = found[:max_uploads]
    items = [
        el("Bucket", ctx.bucket),
        el("KeyMarker", encode(key_marker)),
        el("UploadIdMarker", id_marker),
        el("NextKeyMarker", encode(found[-1].key) if found else ""),
        el("NextUploadIdMarker", found[-1].upload_id if found else ""),
        el("MaxUploads", max_uploads),
        el("IsTruncated", truncated),
    ]
    if prefix:
        items.append(el("Prefix", encode(prefix)))
    if "encoding-type" in ctx.query:
        items.append(el("EncodingType", "url"))
    for upload in found:
        items.append(
            el(
                "Upload",
                raw(
                    el("Key", encode(upload.key)),
                    el("UploadId", upload.upload_id),
                    el("Initiator", raw(el("ID", upload.owner_id), el("DisplayName", upload.owner_name))),
                    owner_xml(upload.owner_id, upload.owner_name),
                    el("StorageClass", "STANDARD"),
                    el("Initiated", iso_time(upload.initiated)),
                ),
            )
        )
    return xml_response("ListMultipartUploadsResult", "".join(items))
