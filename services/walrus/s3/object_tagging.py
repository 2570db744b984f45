"""Object tagging: Put/Get/DeleteObjectTagging, on the current version or the one `versionId` names. Each
version keeps its own tag set in storage, replaced in one transaction."""

from __future__ import annotations

from aiohttp import web

from services.walrus.s3 import tag_sets
from services.walrus.s3.context import Ctx
from services.walrus.s3.errors import S3Error
from services.walrus.s3.names import check_bucket, check_key
from services.walrus.s3.objects import _small_body, open_readable
from services.walrus.s3.versioning import no_such_version, version_headers, version_param
from services.walrus.s3.xml import xml_response
from services.walrus.storage import DeleteMarkerHit, NoSuchKey, NoSuchVersion, ObjectInfo

# Policy actions (current version, named version) and the ACL permission that grants them without a policy:
# whoever may read the object may read its tags; changing them takes WRITE_ACP (the owner, FULL_CONTROL).
GET_ACTIONS = ("s3:GetObjectTagging", "s3:GetObjectVersionTagging")
PUT_ACTIONS = ("s3:PutObjectTagging", "s3:PutObjectVersionTagging")
DELETE_ACTIONS = ("s3:DeleteObjectTagging", "s3:DeleteObjectVersionTagging")


async def _version(ctx: Ctx, permission: str, actions: tuple[str, str]) -> tuple[ObjectInfo, str | None]:
    """The version the request names, once the requester may act on it."""
    check_bucket(ctx.bucket)
    check_key(ctx.key)
    version_id = version_param(ctx)
    reader = await open_readable(ctx, ctx.bucket, ctx.key, permission, version_id, actions)
    await reader.close()
    return reader.info, version_id


async def _set(ctx: Ctx, info: ObjectInfo, version_id: str | None, tags: dict[str, str], status: int) -> web.Response:
    try:  # the version checked above, not whichever became current meanwhile
        stored = await ctx.app.storage.set_object_tags(ctx.bucket, ctx.key, tags, info.version_id)
    except DeleteMarkerHit:
        raise (S3Error("MethodNotAllowed") if version_id else S3Error("NoSuchKey", Key=ctx.key)) from None
    except (NoSuchKey, NoSuchVersion):
        raise (no_such_version(version_id) if version_id else S3Error("NoSuchKey", Key=ctx.key)) from None
    headers = version_headers(await ctx.app.storage.get_bucket(ctx.bucket), stored)
    return web.Response(status=status, headers=headers)


async def get_object_tagging(ctx: Ctx) -> web.Response:
    info, _ = await _version(ctx, "READ", GET_ACTIONS)
    headers = version_headers(await ctx.app.storage.get_bucket(ctx.bucket), info)
    return xml_response("Tagging", tag_sets.to_xml(info.tags), headers=headers)


async def put_object_tagging(ctx: Ctx) -> web.Response:
    info, version_id = await _version(ctx, "WRITE_ACP", PUT_ACTIONS)
    tags = tag_sets.from_xml(await _small_body(ctx), tag_sets.MAX_OBJECT_TAGS)
    return await _set(ctx, info, version_id, tags, 200)


async def delete_object_tagging(ctx: Ctx) -> web.Response:
    info, version_id = await _version(ctx, "WRITE_ACP", DELETE_ACTIONS)
    return await _set(ctx, info, version_id, {}, 204)
