"""Bucket policy and public access block operations: Put/Get/DeleteBucketPolicy, GetBucketPolicyStatus,
Put/Get/DeletePublicAccessBlock."""

from __future__ import annotations

from aiohttp import web

from services.walrus.s3 import access
from services.walrus.s3 import policy as policies
from services.walrus.s3.buckets import load_bucket
from services.walrus.s3.context import Ctx
from services.walrus.s3.errors import S3Error
from services.walrus.s3.objects import _small_body
from services.walrus.s3.xml import el, xml_response


async def _store(ctx: Ctx, kind: str, document: str | None) -> None:
    await ctx.app.storage.put_bucket_config(ctx.bucket, kind, document)


async def put_bucket_policy(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:PutBucketPolicy", bucket, access.OWNER)
    body = await _small_body(ctx)
    try:
        text = body.decode()
        compiled = policies.parse(text, bucket.name)
    except (UnicodeDecodeError, policies.MalformedPolicy) as err:
        message = str(err) if isinstance(err, policies.MalformedPolicy) else "Policies must be UTF-8"
        raise S3Error("MalformedPolicy", message) from None
    if compiled.public and (await access.public_access_block(ctx, bucket.name)).block_public_policy:
        raise S3Error("AccessDenied", "Access Denied: the bucket's public access block refuses public policies")
    await _store(ctx, access.POLICY, text)
    return web.Response(status=204)


async def get_bucket_policy(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:GetBucketPolicy", bucket, access.OWNER)
    document = await ctx.app.storage.get_bucket_config(bucket.name, access.POLICY)
    if document is None:
        raise S3Error("NoSuchBucketPolicy", BucketName=bucket.name)
    return web.Response(text=document, content_type="application/json")


async def delete_bucket_policy(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:DeleteBucketPolicy", bucket, access.OWNER)
    await _store(ctx, access.POLICY, None)
    return web.Response(status=204)


async def get_bucket_policy_status(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:GetBucketPolicyStatus", bucket, access.OWNER)
    compiled = await access.bucket_policy(ctx, bucket.name)
    if compiled is None:
        raise S3Error("NoSuchBucketPolicy", BucketName=bucket.name)
    return xml_response("PolicyStatus", el("IsPublic", compiled.public))


async def put_public_access_block(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:PutBucketPublicAccessBlock", bucket, access.OWNER)
    block = access.PublicAccessBlock.from_xml(await _small_body(ctx))
    await _store(ctx, access.PUBLIC_ACCESS_BLOCK, block.to_document())
    return web.Response()


async def get_public_access_block(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:GetBucketPublicAccessBlock", bucket, access.OWNER)
    if await ctx.app.storage.get_bucket_config(bucket.name, access.PUBLIC_ACCESS_BLOCK) is None:
        raise S3Error("NoSuchPublicAccessBlockConfiguration", BucketName=bucket.name)
    block = await access.public_access_block(ctx, bucket.name)
    return xml_response("PublicAccessBlockConfiguration", block.to_xml())


async def delete_public_access_block(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:PutBucketPublicAccessBlock", bucket, access.OWNER)
    await _store(ctx, access.PUBLIC_ACCESS_BLOCK, None)
    return web.Response(status=204)
