"""Bucket versioning: Put/GetBucketVersioning, ListObjectVersions, and the versionId parameter and version headers
the object operations share."""

from __future__ import annotations

from xml.sax.saxutils import escape

from aiohttp import web

from services.walrus.s3 import access
from services.walrus.s3.buckets import (
    MAX_KEYS,
    Encoder,
    _encoder,
    _max_keys,
    _prefixes_xml,
    _text_param,
    load_bucket,
    owner_xml,
)
from services.walrus.s3.context import Ctx
from services.walrus.s3.errors import S3Error
from services.walrus.s3.xml import el, iso_time, parse_xml, read_xml_body, xml_response
from services.walrus.storage import BucketInfo, NoSuchVersion, ObjectInfo

MAX_VERSION_ID = 1024


def version_param(ctx: Ctx) -> str | None:
    """The versionId query parameter (None when absent)."""
    value = ctx.query.get("versionId")
    if value is None:
        return None
    if not value or len(value) > MAX_VERSION_ID:
        raise S3Error("InvalidArgument", "Invalid version id specified", ArgumentName="versionId")
    return value


def version_headers(bucket: BucketInfo | None, info: ObjectInfo) -> dict[str, str]:
    """x-amz-version-id (once versioning was ever enabled on the bucket) and x-amz-delete-marker."""
    headers = {}
    if info.version_id != "null" or (bucket is not None and bucket.versioning):
        headers["x-amz-version-id"] = info.version_id
    if info.delete_marker:
        headers["x-amz-delete-marker"] = "true"
    return headers


def no_such_version(version_id: str) -> S3Error:
    return S3Error(
        "NoSuchVersion", "The specified version does not exist.", status=404, VersionId=version_id[:MAX_VERSION_ID]
    )


async def put_bucket_versioning(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:PutBucketVersioning", bucket, access.OWNER)
    root = parse_xml(await read_xml_body(ctx.request))
    if root.tag != "VersioningConfiguration":
        raise S3Error("MalformedXML")
    status = (root.findtext("Status") or "").strip()
    mfa_delete = (root.findtext("MfaDelete") or "Disabled").strip()
    if status not in ("Enabled", "Suspended") or mfa_delete not in ("Enabled", "Disabled"):
        raise S3Error("MalformedXML", "Status must be Enabled or Suspended, MfaDelete Enabled or Disabled")
    if mfa_delete == "Enabled":
        refuse_mfa_delete(ctx)
    await ctx.app.storage.set_bucket_versioning(ctx.bucket, status)
    return web.Response()


def refuse_mfa_delete(ctx: Ctx) -> None:
    """Turning MFA delete on takes the root user's MFA device in x-amz-mfa ("serial code"), and Koala's accounts have
    no MFA devices, so the request fails as S3 fails it for an account without one: AccessDenied, with S3's words
    when the header is missing. (MFA delete is thus never on, and DeleteObject never asks for x-amz-mfa.)"""
    if not ctx.headers.get("x-amz-mfa", "").strip():
        raise S3Error("AccessDenied", "Mfa Authentication must be used for this request")
    raise S3Error("AccessDenied", "the MFA device in x-amz-mfa is not one of this account's")


async def get_bucket_versioning(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:GetBucketVersioning", bucket, access.OWNER)
    return xml_response("VersioningConfiguration", el("Status", bucket.versioning) if bucket.versioning else "")


async def _collect(
    ctx: Ctx, prefix: str, delimiter: str, key_marker: str, version_marker: str, max_keys: int
) -> tuple[list[ObjectInfo | str], bool]:
    """Versions and common prefixes after the markers, in order, at most max_keys; (entries, truncated)."""
    storage = ctx.app.storage
    entries: list[ObjectInfo | str] = []
    cursor_key, cursor_version = key_marker, version_marker
    want = min(MAX_KEYS, max_keys + 1)
    while True:
        try:
            batch = await storage.list_versions(ctx.bucket, prefix, cursor_key, cursor_version, want)
        except NoSuchVersion:
            raise S3Error("InvalidArgument", "Invalid version id specified", ArgumentName="version-id-marker") from None
        if not batch:
            return entries, False
        for info in batch:
            common = ""
            if delimiter:
                cut = info.key.find(delimiter, len(prefix))
                if cut >= 0:
                    common = info.key[: cut + len(delimiter)]
            if common and common <= key_marker:  # the marker is inside this prefix: skip the rest of it
                cursor_key, cursor_version = common + "\U0010ffff", ""
                break
            if len(entries) == max_keys:
                return entries, True
            if common:
                entries.append(common)
                cursor_key, cursor_version = common + "\U0010ffff", ""
                break
            entries.append(info)
            cursor_key, cursor_version = info.key, info.version_id
        else:
            if len(batch) < want:
                return entries, False


_owners: dict[tuple[str, str], str] = {}


def _owner(owner_id: str, owner_name: str) -> str:
    found = _owners.get((owner_id, owner_name))
    if found is None:
        if len(_owners) >= 10000:
            _owners.clear()
        found = _owners[(owner_id, owner_name)] = owner_xml(owner_id, owner_name)
    return found


def _version_xml(info: ObjectInfo, encode: Encoder) -> str:
    """One <Version> or <DeleteMarker>, built directly (a page has a thousand: el() per field cost half its time).
    Only the key needs escaping: version ids, ETags and dates are plain ASCII, owners are escaped once."""
    head = (
        f"<Key>{escape(encode(info.key))}</Key><VersionId>{info.version_id}</VersionId>"
        f"<IsLatest>{'true' if info.is_latest else 'false'}</IsLatest>"
        f"<LastModified>{iso_time(info.last_modified)}</LastModified>"
    )
    owner = _owner(info.owner_id, info.owner_name)
    if info.delete_marker:
        return f"<DeleteMarker>{head}{owner}</DeleteMarker>"
    return (
        f'<Version>{head}<ETag>"{info.etag}"</ETag><Size>{info.size}</Size>'
        f"<StorageClass>STANDARD</StorageClass>{owner}</Version>"
    )


async def list_object_versions(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:ListBucketVersions", bucket, "READ")
    encode = _encoder(ctx)
    prefix, delimiter = _text_param(ctx, "prefix"), _text_param(ctx, "delimiter")
    key_marker = _text_param(ctx, "key-marker")
    version_marker = _text_param(ctx, "version-id-marker")
    if version_marker and not key_marker:
        raise S3Error(
            "InvalidArgument",
            "A version-id marker cannot be specified without a key marker.",
            ArgumentName="version-id-marker",
        )
    max_keys = _max_keys(ctx)
    if version_marker == "null" and not await ctx.app.storage.get_version(ctx.bucket, key_marker, "null"):
        version_marker = ""  # S3 accepts a `null` marker for a key that has none: start after the key
    entries, truncated = await _collect(ctx, prefix, delimiter, key_marker, version_marker, max_keys)
    parts = [
        el("Name", ctx.bucket),
        el("Prefix", encode(prefix)),
        el("KeyMarker", encode(key_marker)),
        el("VersionIdMarker", version_marker),
        el("MaxKeys", max_keys),
    ]
    if delimiter:
        parts.append(el("Delimiter", encode(delimiter)))
    parts.append(el("IsTruncated", truncated))
    if truncated and entries:
        last = entries[-1]
        if isinstance(last, str):
            parts.append(el("NextKeyMarker", encode(last)))
        else:
            parts += [el("NextKeyMarker", encode(last.key)), el("NextVersionIdMarker", last.version_id)]
    if "encoding-type" in ctx.query:
        parts.append(el("EncodingType", "url"))
    parts += [_version_xml(e, encode) for e in entries if not isinstance(e, str)]
    parts.append(_prefixes_xml([e for e in entries if isinstance(e, str)], encode))
    return xml_response("ListVersionsResult", "".join(parts))
