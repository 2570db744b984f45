"""Object Lock: the bucket's configuration (default retention), a new version's retention and legal hold from the
x-amz-object-lock-* headers, Put/GetObjectRetention, Put/GetObjectLegalHold, and who may bypass GOVERNANCE.

The storage layer enforces the locks (a locked version is never removed, whatever calls it); this module turns
S3 requests into lock settings and S3 errors."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from aiohttp import web

from services.walrus.s3 import access
from services.walrus.s3.buckets import load_bucket
from services.walrus.s3.context import Ctx
from services.walrus.s3.errors import S3Error
from services.walrus.s3.versioning import no_such_version, version_param
from services.walrus.s3.xml import el, parse_xml, raw, read_xml_body, xml_response
from services.walrus.storage import (
    LOCK_MODES,
    BucketInfo,
    DefaultRetention,
    DeleteMarkerHit,
    ObjectInfo,
)

DAY = 86400
MAX_RETENTION_DAYS = 36500  # a hundred years


def parse_date(value: str, name: str) -> float:
    text = value.strip()
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise S3Error("InvalidArgument", f"{name} must be an ISO 8601 date", ArgumentName=name) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def iso_date(stamp: float) -> str:
    return dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _check_retention(mode: str, until: float) -> None:
    if mode not in LOCK_MODES:
        raise S3Error("InvalidArgument", "Unknown wormMode directive.", ArgumentName="x-amz-object-lock-mode")
    if until <= time.time():
        raise S3Error("InvalidArgument", "The retain until date must be in the future!")
    if until > time.time() + MAX_RETENTION_DAYS * DAY:
        raise S3Error("InvalidArgument", "The retain until date is too far in the future")


def lock_from_headers(ctx: Ctx, bucket: BucketInfo) -> tuple[str, float, bool]:
    """(mode, retain until, legal hold) for a new version: its headers, else the bucket's default retention."""
    mode = ctx.headers.get("x-amz-object-lock-mode", "").strip()
    until_text = ctx.headers.get("x-amz-object-lock-retain-until-date")
    hold_text = ctx.headers.get("x-amz-object-lock-legal-hold")
    if not (mode or until_text or hold_text):
        default = bucket.default_retention
        if default is None:
            return "", 0.0, False
        return default.mode, time.time() + (default.days + 365 * default.years) * DAY, False
    if not bucket.object_lock:
        raise S3Error("InvalidRequest", "Bucket is missing Object Lock Configuration")
    until = 0.0
    if mode or until_text:
        if not (mode and until_text):
            raise S3Error(
                "InvalidArgument",
                "x-amz-object-lock-retain-until-date and x-amz-object-lock-mode must both be supplied",
            )
        until = parse_date(until_text or "", "x-amz-object-lock-retain-until-date")
        _check_retention(mode, until)
    hold = False
    if hold_text is not None:
        if hold_text.strip() not in ("ON", "OFF"):
            raise S3Error("InvalidArgument", "Legal Hold must be either of 'ON' or 'OFF'")
        hold = hold_text.strip() == "ON"
    return mode, until, hold


def lock_headers(info: ObjectInfo) -> dict[str, str]:
    headers = {}
    if info.lock_mode:
        headers["x-amz-object-lock-mode"] = info.lock_mode
        headers["x-amz-object-lock-retain-until-date"] = iso_date(info.lock_until)
    if info.legal_hold:
        headers["x-amz-object-lock-legal-hold"] = "ON"
    return headers


async def may_bypass_governance(ctx: Ctx, bucket: BucketInfo, key: str) -> bool:
    """x-amz-bypass-governance-retention, honoured for callers with s3:BypassGovernanceRetention: the bucket
    owner's account, or whom the bucket policy allows."""
    if ctx.headers.get("x-amz-bypass-governance-retention", "").strip().lower() != "true":
        return False
    return await access.allowed(ctx, "s3:BypassGovernanceRetention", bucket, access.OWNER, key=key)


# --- bucket configuration ---
async def put_object_lock_configuration(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:PutBucketObjectLockConfiguration", bucket, access.OWNER)
    root = parse_xml(await read_xml_body(ctx.request))
    if root.tag != "ObjectLockConfiguration" or (root.findtext("ObjectLockEnabled") or "").strip() != "Enabled":
        raise S3Error("MalformedXML")
    default = None
    rule = root.find("Rule")
    if rule is not None:
        node = rule.find("DefaultRetention")
        if node is None:
            raise S3Error("MalformedXML")
        mode = (node.findtext("Mode") or "").strip()
        days_text, years_text = node.findtext("Days"), node.findtext("Years")
        if mode not in LOCK_MODES or (days_text is None) == (years_text is None):
            raise S3Error("MalformedXML")
        try:
            number = int((days_text if days_text is not None else years_text) or "")
        except ValueError:
            raise S3Error("MalformedXML") from None
        limit = MAX_RETENTION_DAYS if days_text is not None else MAX_RETENTION_DAYS // 365
        if not 0 < number <= limit:
            raise S3Error("InvalidArgument", "Default retention period must be a positive integer value.")
        default = DefaultRetention(mode, number, 0) if days_text is not None else DefaultRetention(mode, 0, number)
    await ctx.app.storage.set_bucket_object_lock(ctx.bucket, default)
    return web.Response()


async def get_object_lock_configuration(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:GetBucketObjectLockConfiguration", bucket, access.OWNER)
    if not bucket.object_lock:
        raise S3Error(
            "ObjectLockConfigurationNotFoundError",
            "Object Lock configuration does not exist for this bucket",
            status=404,
            BucketName=ctx.bucket,
        )
    body = el("ObjectLockEnabled", "Enabled")
    default = bucket.default_retention
    if default is not None:
        period = el("Days", default.days) if default.days else el("Years", default.years)
        body += el("Rule", raw(el("DefaultRetention", raw(el("Mode", default.mode), period))))
    return xml_response("ObjectLockConfiguration", body)


# --- per version ---
async def _locked_bucket(ctx: Ctx, action: str, permission: str) -> BucketInfo:
    bucket = await load_bucket(ctx)
    await access.check(ctx, action, bucket, permission, key=ctx.key)
    if not bucket.object_lock:
        raise S3Error("InvalidRequest", "Bucket is missing Object Lock Configuration")
    return bucket


async def _version(ctx: Ctx) -> ObjectInfo:
    version_id = version_param(ctx)
    info = await ctx.app.storage.get_version(ctx.bucket, ctx.key, version_id)
    if info is None:
        raise no_such_version(version_id) if version_id else S3Error("NoSuchKey", Key=ctx.key)
    if info.delete_marker:
        raise S3Error("MethodNotAllowed") if version_id else S3Error("NoSuchKey", Key=ctx.key)
    return info


async def _set_lock(ctx: Ctx, bucket: BucketInfo, **changes: Any) -> None:
    try:
        await ctx.app.storage.set_object_lock(
            ctx.bucket,
            ctx.key,
            version_param(ctx),
            bypass_governance=await may_bypass_governance(ctx, bucket, ctx.key),
            **changes,
        )
    except DeleteMarkerHit:
        raise S3Error("MethodNotAllowed") from None


async def put_object_retention(ctx: Ctx) -> web.Response:
    bucket = await _locked_bucket(ctx, "s3:PutObjectRetention", "WRITE")
    root = parse_xml(await read_xml_body(ctx.request))
    if root.tag != "Retention":
        raise S3Error("MalformedXML")
    mode = (root.findtext("Mode") or "").strip()
    until_text = root.findtext("RetainUntilDate")
    if not mode and until_text is None:  # an empty retention removes it (GOVERNANCE with bypass only)
        await _set_lock(ctx, bucket, retention=("", 0.0))
        return web.Response()
    if mode not in LOCK_MODES or until_text is None:
        raise S3Error("MalformedXML")
    until = parse_date(until_text, "RetainUntilDate")
    _check_retention(mode, until)
    await _set_lock(ctx, bucket, retention=(mode, until))
    return web.Response()


async def get_object_retention(ctx: Ctx) -> web.Response:
    await _locked_bucket(ctx, "s3:GetObjectRetention", "READ")
    info = await _version(ctx)
    if not info.lock_mode:
        raise S3Error(
            "NoSuchObjectLockConfiguration", "The specified object does not have a ObjectLock configuration", status=404
        )
    return xml_response("Retention", el("Mode", info.lock_mode) + el("RetainUntilDate", iso_date(info.lock_until)))


async def put_object_legal_hold(ctx: Ctx) -> web.Response:
    bucket = await _locked_bucket(ctx, "s3:PutObjectLegalHold", "WRITE")
    root = parse_xml(await read_xml_body(ctx.request))
    status = (root.findtext("Status") or "").strip()
    if root.tag != "LegalHold" or status not in ("ON", "OFF"):
        raise S3Error("MalformedXML")
    await _set_lock(ctx, bucket, legal_hold=status == "ON")
    return web.Response()


async def get_object_legal_hold(ctx: Ctx) -> web.Response:
    await _locked_bucket(ctx, "s3:GetObjectLegalHold", "READ")
    info = await _version(ctx)
    return xml_response("LegalHold", el("Status", "ON" if info.legal_hold else "OFF"))
