"""Browser-based uploads: POST Object with an HTML form (multipart/form-data), as S3 documents it.

The fields before the file are read (20 KiB at most, as S3 allows), the policy's signature checked (SigV4:
x-amz-algorithm/-credential/-date/-signature; SigV2: AWSAccessKeyId/signature), the policy's conditions checked
against the fields, the caller's access checked, and only then is the file streamed into storage, counted against
content-length-range. A form without a policy is an anonymous upload (the bucket must let anyone write).
The answer is success_action_redirect (303), or success_action_status 200, 201 (with a PostResponse document) or
204 (the default)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import time
from urllib.parse import quote, urlsplit

from aiohttp import BodyPartReader, MultipartReader, web

from common import sigv4
from services.walrus.s3 import access, auth, object_lock, post_policy, tag_sets
from services.walrus.s3 import acl as acls
from services.walrus.s3.buckets import load_bucket
from services.walrus.s3.context import Ctx
from services.walrus.s3.errors import S3Error
from services.walrus.s3.names import check_key
from services.walrus.s3.objects import STORED_HEADERS, check_storage_class, commit
from services.walrus.s3.versioning import version_headers
from services.walrus.s3.xml import el, xml_response
from services.walrus.storage import BucketInfo, ObjectSpec

MAX_FIELDS_BYTES = 20 * 1024  # everything before the file
MAX_FIELDS = 200
FORM_HEADERS = {name.lower(): name for name in (*STORED_HEADERS, "Content-Type")}


def _missing(name: str) -> S3Error:
    return S3Error(
        "InvalidArgument",
        f"Bucket POST must contain a field named '{name}'.  If it is specified, please check the order of the fields.",
        ArgumentName=name,
    )


async def _read_fields(reader: MultipartReader) -> tuple[dict[str, str], BodyPartReader | None]:
    """The form's fields (names in lower case) up to the file part, which is returned unread."""
    fields: dict[str, str] = {}
    size = 0
    while True:
        try:
            part = await reader.next()
        except (ValueError, AssertionError, RuntimeError):
            raise S3Error("MalformedPOSTRequest") from None
        if part is None:
            return fields, None
        if not isinstance(part, BodyPartReader) or not part.name:
            raise S3Error("MalformedPOSTRequest")
        name = part.name.lower()
        if name == "file":
            return fields, part
        value = bytearray()
        while chunk := await part.read_chunk(4096):
            value += chunk
            size += len(chunk)
            if size > MAX_FIELDS_BYTES:
                raise S3Error(
                    "MaxPostPreDataLengthExceededError",
                    "Your POST request fields preceeding the upload file was too large.",
                    MaxPostPreDataLength=MAX_FIELDS_BYTES,
                )
        if len(fields) >= MAX_FIELDS:
            raise S3Error("MalformedPOSTRequest", "too many form fields")
        try:
            fields[name] = value.decode()
        except UnicodeDecodeError:
            raise S3Error("MalformedPOSTRequest", f"the field {name[:64]} is not UTF-8") from None


async def _authenticate(ctx: Ctx, fields: dict[str, str]) -> None:
    """Set ctx.requester from the policy's signature; AccessDenied / SignatureDoesNotMatch as S3 answers."""
    policy = fields.get("policy")
    if policy is None:
        return  # anonymous
    if "x-amz-signature" in fields or "x-amz-algorithm" in fields:
        for name in ("x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-signature"):
            if name not in fields:
                raise _missing(name)
        if fields["x-amz-algorithm"] != "AWS4-HMAC-SHA256":
            raise S3Error("InvalidArgument", "Only AWS4-HMAC-SHA256 is supported", ArgumentName="x-amz-algorithm")
        access_key, date, region, service, _ = auth._parse_credential(fields["x-amz-credential"])
        creds = await ctx.app.keys.resolve(access_key)
        expected = sigv4.hmac_hex(sigv4.signing_key(creds.secret, date, region, service), policy)
        provided = fields["x-amz-signature"].lower()
        version = "AWS4-HMAC-SHA256"
    else:
        for name in ("awsaccesskeyid", "signature"):
            if name not in fields:
                raise _missing("AWSAccessKeyId" if name == "awsaccesskeyid" else "Signature")
        access_key = fields["awsaccesskeyid"]
        creds = await ctx.app.keys.resolve(access_key)
        expected = base64.b64encode(hmac.new(creds.secret.encode(), policy.encode(), hashlib.sha1).digest()).decode()
        provided = fields["signature"]
        version = "AWS"
    if not hmac.compare_digest(expected.encode(), provided.encode()):
        raise S3Error("SignatureDoesNotMatch", AWSAccessKeyId=access_key, StringToSign=policy[:4096])
    ctx.requester = auth._principal_requester(ctx, creds)
    ctx.auth_type, ctx.signature_version, ctx.signed_at = "POST", version, time.time()


def _spec(ctx: Ctx, fields: dict[str, str], bucket: BucketInfo, file_type: str) -> ObjectSpec:
    check_storage_class(fields.get("x-amz-storage-class"))
    requester = ctx.requester
    owner_id = requester.account_id or "anonymous"
    owner_name = requester.account_name or "anonymous"
    meta, size = {}, 0
    for name, value in fields.items():
        if name.startswith("x-amz-meta-"):
            meta[name[11:]] = value
            size += len(name[11:].encode()) + len(value.encode())
    if size > ctx.app.limits.max_user_metadata:
        raise S3Error("MetadataTooLarge", Size=size, MaxSizeAllowed=ctx.app.limits.max_user_metadata)
    canned = fields.get("acl")
    acl = acls.canned(canned.strip(), owner_id, owner_name, (bucket.owner_id, bucket.owner_name)) if canned else None
    stored = {FORM_HEADERS[n]: v for n, v in fields.items() if n in FORM_HEADERS and n != "content-type"}
    content_type = fields.get("content-type") or file_type or "binary/octet-stream"
    mode, until, hold = object_lock.lock_from_headers(ctx, bucket)
    return ObjectSpec(
        owner_id,
        owner_name,
        acl or acls.canned("private", owner_id, owner_name),
        content_type[:1024],
        stored,
        meta,
        {},
        mode,
        until,
        hold,
    )


def _redirect_target(fields: dict[str, str]) -> str | None:
    target = fields.get("success_action_redirect") or fields.get("redirect")
    if not target:
        return None
    parts = urlsplit(target)
    return target if parts.scheme in ("http", "https") and parts.netloc else None


async def post_object(ctx: Ctx) -> web.Response:
    content_type = ctx.headers.get("Content-Type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise S3Error("PreconditionFailed", Condition="Bucket POST must be of the enclosure-type multipart/form-data")
    bucket = await load_bucket(ctx)
    try:
        reader = await ctx.request.multipart()
    except (ValueError, AssertionError, KeyError):
        raise S3Error("MalformedPOSTRequest") from None
    fields, file_part = await _read_fields(reader)
    await _authenticate(ctx, fields)
    if "key" not in fields:
        raise _missing("key")
    if file_part is None:
        raise S3Error("InvalidArgument", "POST requires exactly one file upload per request.", ArgumentName="file")
    length_range = None
    if "policy" in fields:
        policy = post_policy.parse(fields["policy"])
        post_policy.check(policy, fields, bucket.name, time.time())
        length_range = policy.length_range
    key = fields["key"].replace("${filename}", file_part.filename or "")
    check_key(key)
    ctx.key = key
    if "tagging" in fields:
        ctx.form_tags = tag_sets.from_xml(fields["tagging"].encode(), tag_sets.MAX_OBJECT_TAGS)
    await access.check(ctx, "s3:PutObject", bucket, "WRITE", key=key)
    spec = _spec(ctx, fields, bucket, file_part.headers.get("Content-Type", ""))
    spec = dataclasses.replace(spec, tags=ctx.form_tags or {})
    spec = dataclasses.replace(spec, acl=await access.vet_acl(ctx, bucket.name, spec.acl))
    limit = ctx.app.limits.max_object_size
    if length_range is not None:
        limit = min(limit, length_range[1])
    data = await ctx.app.storage.new_data(())
    try:
        size = 0
        while chunk := await file_part.read_chunk(1 << 18):
            size += len(chunk)
            if size > limit:
                raise S3Error("EntityTooLarge", ProposedSize=size, MaxSizeAllowed=limit)
            await data.write(chunk)
        if length_range is not None and size < length_range[0]:
            raise S3Error("EntityTooSmall", ProposedSize=size, MinSizeAllowed=length_range[0])
        await data.finish()
    except BaseException:
        await data.abort()
        raise
    info = await commit(ctx, data, spec)
    headers = {"ETag": f'"{info.etag}"', **version_headers(bucket, info)}
    location = f"{ctx.request.scheme}://{ctx.request.host}/{quote(bucket.name)}/{quote(key)}"
    target = _redirect_target(fields)
    if target is not None:
        query = f"bucket={quote(bucket.name)}&key={quote(key)}&etag={quote(headers['ETag'])}"
        headers["Location"] = target + ("&" if urlsplit(target).query else "?") + query
        return web.Response(status=303, headers=headers)
    headers["Location"] = location
    status = fields.get("success_action_status", "")
    if status == "201":
        body = el("Location", location) + el("Bucket", bucket.name) + el("Key", key) + el("ETag", headers["ETag"])
        return xml_response("PostResponse", body, status=201, headers=headers)
    return web.Response(status=200 if status == "200" else 204, headers=headers)
