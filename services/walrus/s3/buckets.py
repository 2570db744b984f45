"""Service and bucket operations: ListBuckets, Create/Head/Delete bucket, location, ACL, and the listings."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from urllib.parse import quote
from xml.sax.saxutils import escape

from aiohttp import web

from services.walrus.s3 import access
from services.walrus.s3 import acl as acls
from services.walrus.s3.context import Ctx
from services.walrus.s3.errors import S3Error
from services.walrus.s3.names import check_bucket
from services.walrus.s3.xml import child_text, el, iso_time, parse_xml, raw, read_xml_body, xml_response
from services.walrus.storage import BucketInfo, ObjectInfo

MAX_KEYS = 1000
LEGACY_REGION = ("", "us-east-1")  # where re-creating a bucket one owns succeeds, as in AWS's us-east-1


async def load_bucket(ctx: Ctx) -> BucketInfo:
    check_bucket(ctx.bucket)
    info = await ctx.app.storage.get_bucket(ctx.bucket)
    if info is None:
        raise S3Error("NoSuchBucket", BucketName=ctx.bucket)
    return info


def owner_xml(owner_id: str, owner_name: str) -> str:
    return el("Owner", raw(el("ID", owner_id), el("DisplayName", owner_name)))


async def list_buckets(ctx: Ctx) -> web.Response:
    if not ctx.requester.account_id:
        raise S3Error("AccessDenied")
    found = await ctx.app.storage.list_buckets(ctx.requester.account_id)
    items = "".join(el("Bucket", raw(el("Name", b.name), el("CreationDate", iso_time(b.created)))) for b in found)
    body = owner_xml(ctx.requester.account_id, ctx.requester.account_name) + el("Buckets", raw(items))
    return xml_response("ListAllMyBucketsResult", body)


async def create_bucket(ctx: Ctx) -> web.Response:
    check_bucket(ctx.bucket)
    requester = ctx.requester
    if not requester.account_id:
        raise S3Error("AccessDenied")
    location = ""
    body = await read_xml_body(ctx.request)
    if body.strip():
        root = parse_xml(body)
        if root.tag != "CreateBucketConfiguration":
            raise S3Error("MalformedXML")
        location = (child_text(root, "LocationConstraint") or "").strip()
        if len(location) > 64:
            raise S3Error("InvalidLocationConstraint", "The specified location-constraint is not valid", status=400)
    acl = acls.from_headers(ctx, requester.account_id, requester.account_name) or acls.canned(
        "private", requester.account_id, requester.account_name
    )
    lock_header = ctx.headers.get("x-amz-bucket-object-lock-enabled", "false").strip().lower()
    if lock_header not in ("true", "false"):
        raise S3Error("InvalidArgument", "x-amz-bucket-object-lock-enabled must be true or false")
    acl = await acls.resolve_grantees(ctx, acl) or acl
    storage = ctx.app.storage
    existing = await storage.get_bucket(ctx.bucket)
    if existing is not None:
        if existing.owner_id == requester.account_id:
            if existing.location in LEGACY_REGION and location in LEGACY_REGION:
                # us-east-1's legacy answer: 200, and the bucket's ACL reset to the one asked for
                await access.vet_acl(ctx, existing.name, acl)
                await storage.set_bucket_acl(ctx.bucket, acl)
                return web.Response(headers={"Location": "/" + ctx.bucket})
            raise S3Error("BucketAlreadyOwnedByYou", BucketName=ctx.bucket)
        raise S3Error("BucketAlreadyExists", BucketName=ctx.bucket)
    if len(await storage.list_buckets(requester.account_id)) >= ctx.app.limits.max_buckets:
        raise S3Error("TooManyBuckets")
    await storage.create_bucket(ctx.bucket, acl, location, object_lock=lock_header == "true")
    return web.Response(headers={"Location": "/" + ctx.bucket})


async def head_bucket(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:ListBucket", bucket, "READ")
    return web.Response(headers={"x-amz-bucket-region": bucket.location or "us-east-1"})


async def delete_bucket(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:DeleteBucket", bucket, access.OWNER)
    await ctx.app.storage.delete_bucket(ctx.bucket)
    return web.Response(status=204)


async def get_bucket_location(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:GetBucketLocation", bucket, access.OWNER)
    return xml_response("LocationConstraint", escape(bucket.location))


async def get_bucket_acl(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:GetBucketAcl", bucket, "READ_ACP")
    return xml_response("AccessControlPolicy", acls.to_xml(bucket.acl))


async def put_bucket_acl(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:PutBucketAcl", bucket, "WRITE_ACP")
    new = acls.from_headers(ctx, bucket.owner_id, bucket.owner_name)
    body = await read_xml_body(ctx.request)
    if new is None:
        if not body.strip():
            raise S3Error("MissingSecurityHeader", "an ACL in headers or in the body is required")
        new = acls.from_xml(body, bucket.acl)
    elif body.strip():
        raise S3Error("UnexpectedContent", "This request does not support content", status=400)
    new = await access.vet_acl(ctx, bucket.name, new)
    await ctx.app.storage.set_bucket_acl(ctx.bucket, new)
    return web.Response()


# --- listings ----------------------------------------------------------------------------------------------
def _max_keys(ctx: Ctx, name: str = "max-keys") -> int:
    value = ctx.query.get(name, str(MAX_KEYS))
    try:
        number = int(value)
    except ValueError:
        raise S3Error("InvalidArgument", f"{name} must be an integer", ArgumentName=name, ArgumentValue=value) from None
    if number < 0:
        raise S3Error("InvalidArgument", f"{name} must not be negative", ArgumentName=name, ArgumentValue=value)
    return min(number, MAX_KEYS)


Encoder = Callable[[str], str]


def _encoder(ctx: Ctx) -> Encoder:
    encoding = ctx.query.get("encoding-type")
    if encoding is None:
        return lambda text: text
    if encoding != "url":
        raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request", ArgumentName="encoding-type")
    return lambda text: quote(text, safe="/")


async def collect(
    ctx: Ctx, prefix: str, delimiter: str, after: str, max_keys: int
) -> tuple[list[ObjectInfo], list[str], bool, str]:
    """Objects and common prefixes after `after`, in order; (contents, prefixes, truncated, last item)."""
    storage = ctx.app.storage
    contents: list[ObjectInfo] = []
    prefixes: list[str] = []
    cursor, last = after, ""
    if max_keys == 0:  # S3 answers an empty, untruncated page
        return contents, prefixes, False, last
    while True:
        batch = await storage.list_objects(ctx.bucket, prefix, cursor, min(MAX_KEYS, max_keys + 1))
        if not batch:
            return contents, prefixes, False, last
        for obj in batch:
            common = ""
            if delimiter:
                cut = obj.key.find(delimiter, len(prefix))
                if cut >= 0:
                    common = obj.key[: cut + len(delimiter)]
            if common and common <= after:
                cursor = common + "\U0010ffff"  # the marker is inside this prefix: skip the rest of it
                break
            if len(contents) + len(prefixes) == max_keys:
                return contents, prefixes, True, last
            if common:
                prefixes.append(common)
                last = common
                cursor = common + "\U0010ffff"
                break
            contents.append(obj)
            last = cursor = obj.key
        else:
            if len(batch) < min(MAX_KEYS, max_keys + 1):
                return contents, prefixes, False, last


def _contents_xml(objects: list[ObjectInfo], encode: Encoder, with_owner: bool) -> str:
    parts = []
    for obj in objects:
        inner = [
            el("Key", encode(obj.key)),
            el("LastModified", iso_time(obj.last_modified)),
            el("ETag", f'"{obj.etag}"'),
            el("Size", obj.size),
            el("StorageClass", "STANDARD"),
        ]
        if with_owner:
            inner.append(owner_xml(obj.owner_id, obj.owner_name))
        parts.append(el("Contents", raw(*inner)))
    return "".join(parts)


def _prefixes_xml(prefixes: list[str], encode: Encoder) -> str:
    return "".join(el("CommonPrefixes", raw(el("Prefix", encode(p)))) for p in prefixes)


async def _listable(ctx: Ctx, action: str = "s3:ListBucket") -> None:
    bucket = await load_bucket(ctx)
    await access.check(ctx, action, bucket, "READ")


def _text_param(ctx: Ctx, name: str) -> str:
    value = ctx.query.get(name, "")
    if len(value.encode()) > 1024:
        raise S3Error("InvalidArgument", f"{name} is too long", ArgumentName=name)
    return value


async def list_objects(ctx: Ctx) -> web.Response:
    await _listable(ctx)
    encode = _encoder(ctx)
    prefix, delimiter, marker = _text_param(ctx, "prefix"), _text_param(ctx, "delimiter"), _text_param(ctx, "marker")
    max_keys = _max_keys(ctx)
    contents, prefixes, truncated, last = await collect(ctx, prefix, delimiter, marker, max_keys)
    parts = [
        el("Name", ctx.bucket),
        el("Prefix", encode(prefix)),
        el("Marker", encode(marker)),
        el("MaxKeys", max_keys),
    ]
    if delimiter:
        parts.append(el("Delimiter", encode(delimiter)))
    parts.append(el("IsTruncated", truncated))
    if truncated and delimiter:
        parts.append(el("NextMarker", encode(last)))
    if "encoding-type" in ctx.query:
        parts.append(el("EncodingType", "url"))
    parts += [_contents_xml(contents, encode, True), _prefixes_xml(prefixes, encode)]
    return xml_response("ListBucketResult", "".join(parts))


def _token(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode()


def _untoken(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise S3Error(
            "InvalidArgument", "The continuation token provided is incorrect", ArgumentName="continuation-token"
        ) from None


async def list_objects_v2(ctx: Ctx) -> web.Response:
    await _listable(ctx)
    encode = _encoder(ctx)
    prefix, delimiter = _text_param(ctx, "prefix"), _text_param(ctx, "delimiter")
    start_after = _text_param(ctx, "start-after")
    token = ctx.query.get("continuation-token")
    after = _untoken(token) if token is not None else start_after
    max_keys = _max_keys(ctx)
    fetch_owner = ctx.query.get("fetch-owner", "false").lower() == "true"
    contents, prefixes, truncated, last = await collect(ctx, prefix, delimiter, after, max_keys)
    parts = [el("Name", ctx.bucket), el("Prefix", encode(prefix)), el("MaxKeys", max_keys)]
    if delimiter:
        parts.append(el("Delimiter", encode(delimiter)))
    parts += [el("KeyCount", len(contents) + len(prefixes)), el("IsTruncated", truncated)]
    if token is not None:
        parts.append(el("ContinuationToken", token))
    if truncated:
        parts.append(el("NextContinuationToken", _token(last)))
    if start_after:
        parts.append(el("StartAfter", encode(start_after)))
    if "encoding-type" in ctx.query:
        parts.append(el("EncodingType", "url"))
    parts += [_contents_xml(contents, encode, fetch_owner), _prefixes_xml(prefixes, encode)]
    return xml_response("ListBucketResult", "".join(parts))
