"""GetObjectAttributes: an object's (or version's) ETag, checksum, parts, storage class and size in one answer,
the attributes named by x-amz-object-attributes, parts paged by x-amz-max-parts / x-amz-part-number-marker."""

from __future__ import annotations

from aiohttp import web

from services.walrus.s3.context import Ctx
from services.walrus.s3.errors import S3Error
from services.walrus.s3.names import check_bucket, check_key
from services.walrus.s3.objects import open_readable
from services.walrus.s3.versioning import version_headers, version_param
from services.walrus.s3.xml import el, http_time, raw, xml_response

ATTRIBUTES = {"etag": "ETag", "checksum": "Checksum", "objectparts": "ObjectParts", "storageclass": "StorageClass",
              "objectsize": "ObjectSize"}  # fmt: skip
MAX_PARTS = 1000


def _count(ctx: Ctx, header: str, default: int) -> int:
    value = ctx.headers.get(header)
    if value is None:
        return default
    if not value.strip().isdigit() or len(value.strip()) > 9:
        raise S3Error("InvalidArgument", f"{header} must be a non-negative integer", ArgumentName=header)
    return int(value)


def _wanted(ctx: Ctx) -> list[str]:
    names = [n.strip() for n in ",".join(ctx.headers.getall("x-amz-object-attributes", [])).split(",") if n.strip()]
    if not names:
        raise S3Error(
            "InvalidArgument",
            "The x-amz-object-attributes header specifying the attributes to be retrieved is either missing or empty",
            ArgumentName="x-amz-object-attributes",
        )
    wanted = []
    for name in names:
        canonical = ATTRIBUTES.get(name.lower())
        if canonical is None:
            raise S3Error(
                "InvalidArgument",
                "Invalid attribute name specified.",
                ArgumentName="x-amz-object-attributes",
                ArgumentValue=name[:64],
            )
        if canonical not in wanted:
            wanted.append(canonical)
    return wanted


async def get_object_attributes(ctx: Ctx) -> web.Response:
    check_bucket(ctx.bucket)
    check_key(ctx.key)
    wanted = _wanted(ctx)
    max_parts = min(_count(ctx, "x-amz-max-parts", MAX_PARTS), MAX_PARTS)
    marker = _count(ctx, "x-amz-part-number-marker", 0)
    version_id = version_param(ctx)
    reader = await open_readable(ctx, ctx.bucket, ctx.key, "READ", version_id)
    await reader.close()
    info = reader.info
    parts = []
    for name in wanted:
        if name == "ETag":
            parts.append(el("ETag", info.etag))
        elif name == "Checksum" and info.checksums:
            parts.append(el("Checksum", raw(*(el(f"Checksum{a.upper()}", v) for a, v in info.checksums.items()))))
        elif name == "ObjectParts" and info.parts:
            numbered = list(enumerate(info.parts, start=1))
            page = [(n, size) for n, size in numbered if n > marker][:max_parts]
            truncated = bool(page) and page[-1][0] < len(info.parts)
            items = [
                el("PartsCount", len(info.parts)),
                el("PartNumberMarker", marker),
                el("NextPartNumberMarker", page[-1][0] if page else marker),
                el("MaxParts", max_parts),
                el("IsTruncated", truncated),
            ]
            items += [el("Part", raw(el("PartNumber", n), el("Size", size))) for n, size in page]
            parts.append(el("ObjectParts", raw(*items)))
        elif name == "StorageClass":
            parts.append(el("StorageClass", "STANDARD"))
        elif name == "ObjectSize":
            parts.append(el("ObjectSize", info.size))
    bucket = await ctx.app.storage.get_bucket(ctx.bucket)
    headers = {"Last-Modified": http_time(info.last_modified), **version_headers(bucket, info)}
    return xml_response("GetObjectAttributesResponse", "".join(parts), headers=headers)
