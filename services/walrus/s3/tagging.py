"""The bucket tagging operations (Put/Get/DeleteBucketTagging); tag sets are parsed and checked in tag_sets."""

from __future__ import annotations

import json

from aiohttp import web

from services.walrus.s3 import access
from services.walrus.s3.buckets import load_bucket
from services.walrus.s3.context import Ctx
from services.walrus.s3.errors import S3Error
from services.walrus.s3.objects import _small_body
from services.walrus.s3.tag_sets import MAX_BUCKET_TAGS, from_xml, to_xml
from services.walrus.s3.xml import xml_response

KIND = "tagging"


async def put_bucket_tagging(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:PutBucketTagging", bucket, access.OWNER)
    tags = from_xml(await _small_body(ctx), MAX_BUCKET_TAGS)
    await ctx.app.storage.put_bucket_config(bucket.name, KIND, json.dumps(tags))
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
    await ctx.app.storage.put_bucket_config(bucket.name, KIND, None)
    return web.Response(status=204)
