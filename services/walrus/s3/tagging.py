"""Tag sets: the `<Tagging>` document and the x-amz-tagging header checked as S3 checks them, and the bucket
tagging operations (Put/Get/DeleteBucketTagging)."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

from aiohttp import web

from services.walrus.s3 import access
from services.walrus.s3.buckets import load_bucket
from services.walrus.s3.context import Ctx
from services.walrus.s3.errors import S3Error
from services.walrus.s3.objects import _small_body
from services.walrus.s3.xml import el, parse_xml, raw, xml_response
from services.walrus.storage import NoSuchBucket

KIND = "tagging"
MAX_BUCKET_TAGS = 50
MAX_OBJECT_TAGS = 10
MAX_KEY = 128
MAX_VALUE = 256


def check(tags: list[tuple[str, str]], limit: int) -> dict[str, str]:
    if len(tags) > limit:
        raise S3Error("BadRequest", f"Object tags cannot be greater than {limit}" if limit == MAX_OBJECT_TAGS
                      else f"Bucket tag count cannot be greater than {limit}")  # fmt: skip
    out: dict[str, str] = {}
    for key, value in tags:
        if not key or len(key) > MAX_KEY:
            raise S3Error("InvalidTag", "The TagKey you have provided is invalid")
        if len(value) > MAX_VALUE:
            raise S3Error("InvalidTag", "The TagValue you have provided is invalid")
        if key.lower().startswith("aws:"):
            raise S3Error("InvalidTag", "System tags cannot be added/updated by requester")
        if key in out:
            raise S3Error("InvalidTag", "Cannot provide multiple Tags with the same key")
        out[key] = value
    return out


def from_xml(body: bytes, limit: int) -> dict[str, str]:
    root = parse_xml(body)
    tag_set = root.find("TagSet") if root.tag == "Tagging" else None
    if tag_set is None:
        raise S3Error("MalformedXML")
    pairs = []
    for node in tag_set.findall("Tag"):
        key, value = node.findtext("Key"), node.findtext("Value")
        if key is None or value is None:
            raise S3Error("MalformedXML", "each Tag needs a Key and a Value")
        pairs.append((key, value))
    return check(pairs, limit)


def from_header(value: str) -> dict[str, str]:
    """x-amz-tagging: `k1=v1&k2=v2`, URL-encoded."""
    return check(parse_qsl(value, keep_blank_values=True), MAX_OBJECT_TAGS)


def to_xml(tags: dict[str, str]) -> str:
    items = "".join(el("Tag", raw(el("Key", k), el("Value", v))) for k, v in tags.items())
    return el("TagSet", raw(items))


async def put_bucket_tagging(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:PutBucketTagging", bucket, access.OWNER)
    tags = from_xml(await _small_body(ctx), MAX_BUCKET_TAGS)
    try:
        await ctx.app.storage.put_bucket_config(bucket.name, KIND, json.dumps(tags))
    except NoSuchBucket:
        raise S3Error("NoSuchBucket", BucketName=bucket.name) from None
    return web.Response(status=204)


async def get_bucket_tagging(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:GetBucketTagging", bucket, access.OWNER)
    document = await ctx.app.storage.get_bucket_config(bucket.name, KIND)
    if document is None:
        raise S3Error("NoSuchTagSet", BucketName=bucket.name)
    return xml_response("Tagging", to_xml(json.loads(document)))


async def delete_bucket_tagging(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:PutBucketTagging", bucket, access.OWNER)
    try:
        await ctx.app.storage.put_bucket_config(bucket.name, KIND, None)
    except NoSuchBucket:
        raise S3Error("NoSuchBucket", BucketName=bucket.name) from None
    return web.Response(status=204)
