"""Put/Get/DeleteBucketLifecycleConfiguration: the rules' XML checked as S3 checks it and kept as JSON with the
bucket; services.walrus.lifecycle.sweeper carries them out."""

from __future__ import annotations

import datetime as dt
import secrets
import xml.etree.ElementTree as ET
from typing import Any

from aiohttp import web

from services.walrus.lifecycle.rules import Rule, rules_from_json, rules_to_json
from services.walrus.s3 import access, tag_sets
from services.walrus.s3.buckets import load_bucket
from services.walrus.s3.context import Ctx
from services.walrus.s3.errors import S3Error
from services.walrus.s3.xml import el, parse_xml, raw, read_xml_body, xml_response

MAX_RULES = 1000
MAX_ID = 255
MAX_PREFIX = 1024
MAX_DAYS = 1 << 31


# The storage classes S3 transitions objects to (its API's TransitionStorageClass values).
TRANSITION_CLASSES = ("GLACIER", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "DEEP_ARCHIVE", "GLACIER_IR")


def _int(node: ET.Element, tag: str, low: int = 1, high: int = MAX_DAYS) -> int | None:
    text = node.findtext(tag)
    if text is None:
        return None
    try:
        value = int(text.strip())
    except ValueError:
        raise S3Error("MalformedXML", f"{tag} must be an integer") from None
    if not low <= value <= high:
        raise S3Error("InvalidArgument", f"'{tag}' for lifecycle must be a positive integer", ArgumentName=tag)
    return value


def _date(text: str) -> float:
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise S3Error("InvalidArgument", "'Date' must be an ISO 8601 date", ArgumentName="Date") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    moment = moment.astimezone(dt.UTC)
    if (moment.hour, moment.minute, moment.second, moment.microsecond) != (0, 0, 0, 0):
        raise S3Error("InvalidArgument", "'Date' must be at midnight GMT", ArgumentName="Date")
    return moment.timestamp()


def _tags(nodes: list[ET.Element]) -> dict[str, str]:
    """The <Tag> conditions of a filter: each a Key and a Value, keys unique, sizes as object tags have them."""
    found: dict[str, str] = {}
    for node in nodes:
        name, value = node.findtext("Key"), node.findtext("Value")
        if name is None or value is None or len(node) != 2:
            raise S3Error("MalformedXML", "a Tag holds a Key and a Value")
        if not name or len(name) > tag_sets.MAX_KEY:
            raise S3Error("InvalidTag", "The TagKey you have provided is invalid")
        if len(value) > tag_sets.MAX_VALUE:
            raise S3Error("InvalidTag", "The TagValue you have provided is invalid")
        if name in found:
            raise S3Error("InvalidArgument", "Duplicate Tag Keys are not allowed.")
        found[name] = value
    return found


def _filter(rule: ET.Element) -> dict[str, Any]:
    """prefix, legacy_prefix, tags, size_greater and size_less of a rule's <Filter> (or legacy <Prefix>)."""
    node = rule.find("Filter")
    legacy = rule.find("Prefix")
    if (node is None) == (legacy is None):
        raise S3Error("MalformedXML", "a rule needs exactly one of Filter and Prefix")
    if legacy is not None:
        return {"prefix": legacy.text or "", "legacy_prefix": True}
    assert node is not None  # exactly one of the two, checked above
    children = list(node)
    if len(children) > 1:
        raise S3Error("MalformedXML", "a Filter holds one condition (use And for several)")
    if children and children[0].tag == "And":
        node, children = children[0], list(children[0])
        if not children:
            raise S3Error("MalformedXML", "And holds the conditions it joins")
    known = {"Prefix", "Tag", "ObjectSizeGreaterThan", "ObjectSizeLessThan"}
    if any(c.tag not in known for c in children) or len(node.findall("Prefix")) > 1:
        raise S3Error("MalformedXML")
    greater = _int(node, "ObjectSizeGreaterThan", 0, 1 << 62)
    less = _int(node, "ObjectSizeLessThan", 1, 1 << 62)
    found = {
        "prefix": node.findtext("Prefix") or "",
        "tags": _tags(node.findall("Tag")),
        "size_greater": greater,
        "size_less": less,
    }
    if greater is not None and less is not None and greater >= less:
        raise S3Error("InvalidArgument", "ObjectSizeGreaterThan must be less than ObjectSizeLessThan")
    return found


def _refuse_transition(node: ET.Element) -> None:
    """A transition moves objects to another storage class, and Walrus has one (STANDARD, see objects.py): a
    well-formed one is refused as S3 refuses a storage class its bucket cannot hold (InvalidStorageClass, 400), a
    malformed one as S3 refuses that (MalformedXML)."""
    storage_class = (node.findtext("StorageClass") or "").strip()
    if storage_class not in TRANSITION_CLASSES:
        raise S3Error("MalformedXML", f"{node.tag} needs a StorageClass, one of {', '.join(TRANSITION_CLASSES)}")
    raise S3Error(
        "InvalidStorageClass",
        f"Walrus keeps objects in one storage class (STANDARD): no {node.tag} to {storage_class}",
        StorageClassRequested=storage_class,
    )


def parse_rule(node: ET.Element) -> Rule:
    if node.tag != "Rule":
        raise S3Error("MalformedXML")
    rule_id = node.findtext("ID") or secrets.token_urlsafe(12)
    if len(rule_id) > MAX_ID:
        raise S3Error("InvalidArgument", "ID length should not exceed allowed limit of 255", ArgumentName="ID")
    status = (node.findtext("Status") or "").strip()
    if status not in ("Enabled", "Disabled"):
        raise S3Error("MalformedXML", "Status must be Enabled or Disabled")
    for transition in [*node.findall("Transition"), *node.findall("NoncurrentVersionTransition")]:
        _refuse_transition(transition)
    fields: dict[str, Any] = {"id": rule_id, "enabled": status == "Enabled", **_filter(node)}
    if len(fields["prefix"].encode()) > MAX_PREFIX:
        raise S3Error("InvalidArgument", "The prefix is too long", ArgumentName="Prefix")
    expiration = node.find("Expiration")
    if expiration is not None:
        days = _int(expiration, "Days")
        date = expiration.findtext("Date")
        marker = expiration.findtext("ExpiredObjectDeleteMarker")
        given = [days is not None, date is not None, marker is not None]
        if sum(given) != 1:
            raise S3Error("MalformedXML", "Expiration takes one of Days, Date and ExpiredObjectDeleteMarker")
        if marker is not None and marker.strip().lower() not in ("true", "false"):
            raise S3Error("MalformedXML")
        fields["expiration_days"] = days
        fields["expiration_date"] = _date(date) if date is not None else None
        fields["expired_delete_marker"] = marker is not None and marker.strip().lower() == "true"
        if marker is not None and fields.get("tags"):
            raise S3Error("InvalidRequest", "ExpiredObjectDeleteMarker cannot be specified with object tag filters")
    noncurrent = node.find("NoncurrentVersionExpiration")
    if noncurrent is not None:
        fields["noncurrent_days"] = _int(noncurrent, "NoncurrentDays")
        if fields["noncurrent_days"] is None:
            raise S3Error("MalformedXML", "NoncurrentVersionExpiration needs NoncurrentDays")
        fields["newer_noncurrent"] = _int(noncurrent, "NewerNoncurrentVersions", 1, 100) or 0
    abort = node.find("AbortIncompleteMultipartUpload")
    if abort is not None:
        fields["abort_days"] = _int(abort, "DaysAfterInitiation")
        if fields["abort_days"] is None:
            raise S3Error("MalformedXML", "AbortIncompleteMultipartUpload needs DaysAfterInitiation")
        if fields.get("size_greater") is not None or fields.get("size_less") is not None:
            raise S3Error("InvalidRequest", "AbortIncompleteMultipartUpload cannot be used with object size filters")
        if fields.get("tags"):
            raise S3Error("InvalidRequest", "AbortIncompleteMultipartUpload cannot be specified with Tags")
    if expiration is None and noncurrent is None and abort is None:
        raise S3Error("InvalidRequest", "At least one action needs to be specified in a rule")
    return Rule(**fields)


def parse_configuration(body: bytes) -> list[Rule]:
    root = parse_xml(body)
    if root.tag != "LifecycleConfiguration":
        raise S3Error("MalformedXML")
    nodes = root.findall("Rule")
    if not nodes or len(nodes) > MAX_RULES or len(nodes) != len(root):
        raise S3Error("MalformedXML", f"a lifecycle configuration has 1 to {MAX_RULES} rules")
    rules = [parse_rule(node) for node in nodes]
    if len({r.id for r in rules}) != len(rules):
        raise S3Error("InvalidArgument", "Rule ID must be unique. Found same ID for more than one rule")
    return rules


def _iso_day(stamp: float) -> str:
    return dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def rule_xml(rule: Rule) -> str:
    parts = [el("ID", rule.id)]
    if rule.legacy_prefix:
        parts.append(el("Prefix", rule.prefix))
    else:
        conditions = [el("Prefix", rule.prefix)] if rule.prefix else []
        conditions += [el("Tag", raw(el("Key", name), el("Value", value))) for name, value in rule.tags.items()]
        if rule.size_greater is not None:
            conditions.append(el("ObjectSizeGreaterThan", rule.size_greater))
        if rule.size_less is not None:
            conditions.append(el("ObjectSizeLessThan", rule.size_less))
        inner = el("And", raw(*conditions)) if len(conditions) > 1 else "".join(conditions)
        parts.append(el("Filter", raw(inner)))
    parts.append(el("Status", "Enabled" if rule.enabled else "Disabled"))
    if rule.expiration_days is not None:
        parts.append(el("Expiration", raw(el("Days", rule.expiration_days))))
    elif rule.expiration_date is not None:
        parts.append(el("Expiration", raw(el("Date", _iso_day(rule.expiration_date)))))
    elif rule.expired_delete_marker:
        parts.append(el("Expiration", raw(el("ExpiredObjectDeleteMarker", True))))
    if rule.noncurrent_days is not None:
        inner = el("NoncurrentDays", rule.noncurrent_days)
        if rule.newer_noncurrent:
            inner += el("NewerNoncurrentVersions", rule.newer_noncurrent)
        parts.append(el("NoncurrentVersionExpiration", raw(inner)))
    if rule.abort_days is not None:
        parts.append(el("AbortIncompleteMultipartUpload", raw(el("DaysAfterInitiation", rule.abort_days))))
    return el("Rule", raw(*parts))


async def put_bucket_lifecycle_configuration(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:PutLifecycleConfiguration", bucket, access.OWNER)
    rules = parse_configuration(await read_xml_body(ctx.request))
    await ctx.app.storage.set_bucket_lifecycle(ctx.bucket, rules_to_json(rules))
    return web.Response()


async def get_bucket_lifecycle_configuration(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:GetLifecycleConfiguration", bucket, access.OWNER)
    rules = rules_from_json(bucket.lifecycle)
    if not rules:
        raise S3Error(
            "NoSuchLifecycleConfiguration",
            "The lifecycle configuration does not exist",
            status=404,
            BucketName=ctx.bucket,
        )
    return xml_response("LifecycleConfiguration", "".join(rule_xml(r) for r in rules))


async def delete_bucket_lifecycle(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:PutLifecycleConfiguration", bucket, access.OWNER)
    await ctx.app.storage.set_bucket_lifecycle(ctx.bucket, "")
    return web.Response(status=204)
