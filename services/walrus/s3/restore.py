"""RestoreObject (POST ?restore) in a store of one storage class: restoring brings an archived object (GLACIER,
DEEP_ARCHIVE) back for reading, and Walrus keeps every object in STANDARD (see objects.check_storage_class), so
the request is answered as S3 answers it for a STANDARD object: InvalidObjectState (403), once the caller may
restore and the object (version) exists."""

from __future__ import annotations

from aiohttp import web

from services.walrus.s3 import access
from services.walrus.s3.buckets import load_bucket
from services.walrus.s3.context import Ctx
from services.walrus.s3.errors import S3Error
from services.walrus.s3.names import check_key
from services.walrus.s3.versioning import no_such_version, version_param
from services.walrus.s3.xml import parse_xml, read_xml_body


async def restore_object(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    check_key(ctx.key)
    await access.check(ctx, "s3:RestoreObject", bucket, "WRITE", key=ctx.key)
    body = await read_xml_body(ctx.request)
    if body.strip() and parse_xml(body).tag != "RestoreRequest":
        raise S3Error("MalformedXML")
    version_id = version_param(ctx)
    info = await ctx.app.storage.get_version(ctx.bucket, ctx.key, version_id)
    if info is None or (info.delete_marker and version_id is None):
        if version_id is not None:
            raise no_such_version(version_id)
        raise S3Error("NoSuchKey", Key=ctx.key)
    raise S3Error(
        "InvalidObjectState",
        "Restore is not allowed for the object's current storage class",
        StorageClass="STANDARD",
    )
