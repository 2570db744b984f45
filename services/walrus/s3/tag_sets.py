"""Tag sets as S3 checks them: the `<Tagging>` document, the x-amz-tagging header (PutObject, CopyObject,
CreateMultipartUpload) and their limits. Shared by bucket and object tagging."""

from __future__ import annotations

from urllib.parse import parse_qsl

from services.walrus.s3.errors import S3Error
from services.walrus.s3.xml import el, parse_xml, raw

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


def count_header(tags: dict[str, str]) -> dict[str, str]:
    """x-amz-tagging-count on GET/HEAD, only when the object has tags (as S3 answers)."""
    return {"x-amz-tagging-count": str(len(tags))} if tags else {}
