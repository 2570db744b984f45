"""The condition keys a request carries (aws:* and s3:*, as S3 defines them), computed when a policy condition
first asks for one and kept for the rest of the request."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

from services.walrus.s3.context import Ctx
from services.walrus.storage import BucketInfo

Values = tuple[str, ...] | None  # tuples: they key the policy's decision memo as they are
_now_text: tuple[int, str] = (0, "")


def _iso_now() -> str:
    """aws:CurrentTime, formatted once per second."""
    global _now_text
    second = int(time.time())
    if _now_text[0] != second:
        _now_text = (second, dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return _now_text[1]


def _one(value: str | None) -> Values:
    return (value,) if value else None


def _principal_arn(ctx: Ctx) -> Values:
    requester = ctx.requester
    if not requester.account_id:
        return None
    if requester.user_name:
        return (f"arn:aws:iam::{requester.account_id}:user/{requester.user_name}",)
    return (f"arn:aws:iam::{requester.account_id}:root",)


def _tags(found: dict[str, str] | None, wanted: str) -> Values:
    values = tuple(v for k, v in (found or {}).items() if k.lower() == wanted)
    return values or None


# Keys that depend on the request alone.
SIMPLE: dict[str, Callable[[Ctx, BucketInfo], Values]] = {
    "aws:sourceip": lambda ctx, b: _one(ctx.request.remote),
    "aws:securetransport": lambda ctx, b: ("true" if ctx.request.secure else "false",),
    "aws:currenttime": lambda ctx, b: (_iso_now(),),
    "aws:epochtime": lambda ctx, b: (str(int(time.time())),),
    "aws:useragent": lambda ctx, b: _one(ctx.headers.get("User-Agent")),
    "aws:referer": lambda ctx, b: _one(ctx.headers.get("Referer")),
    "aws:principaltype": lambda ctx, b: ("User" if ctx.requester.account_id else "Anonymous",),
    "aws:principalaccount": lambda ctx, b: _one(ctx.requester.account_id),
    "s3:signatureaccount": lambda ctx, b: _one(ctx.requester.account_id),
    "aws:username": lambda ctx, b: _one(ctx.requester.user_name),
    "aws:userid": lambda ctx, b: (
        (ctx.requester.user_id or ctx.requester.account_id,) if ctx.requester.account_id else ("anonymous",)
    ),
    "aws:principalarn": lambda ctx, b: _principal_arn(ctx),
    "s3:resourceaccount": lambda ctx, b: (b.owner_id,),
    "s3:authtype": lambda ctx, b: _one(ctx.auth_type),
    "s3:signatureversion": lambda ctx, b: _one(ctx.signature_version),
    "s3:signatureage": lambda ctx, b: (str(int((time.time() - ctx.signed_at) * 1000)),) if ctx.signed_at else None,
    "s3:prefix": lambda ctx, b: _query(ctx, "prefix"),
    "s3:delimiter": lambda ctx, b: _query(ctx, "delimiter"),
    "s3:max-keys": lambda ctx, b: _query(ctx, "max-keys"),
    "s3:versionid": lambda ctx, b: _query(ctx, "versionId"),
    "s3:requestobjecttagkeys": lambda ctx, b: _tag_keys(ctx),
}


def _query(ctx: Ctx, name: str) -> Values:
    value = ctx.query.get(name)
    return None if value is None else (value,)


def _tag_keys(ctx: Ctx) -> Values:
    tags = ctx.request_tags()
    return None if tags is None else tuple(tags)


class RequestKeys:
    """Callable as a policy's lookup: lower-case key name -> its values, or None when the request lacks it."""

    __slots__ = ("bucket", "cache", "ctx", "existing_tags")

    def __init__(self, ctx: Ctx, bucket: BucketInfo, existing_tags: dict[str, str] | None = None):
        """`existing_tags`: the stored tags of the object the request acts on (s3:ExistingObjectTag/<key>), None
        when it names no object or none is there."""
        self.ctx, self.bucket, self.existing_tags = ctx, bucket, existing_tags
        self.cache: dict[str, Values] = {}

    def __call__(self, name: str) -> Values:
        try:
            return self.cache[name]
        except KeyError:
            value = self.cache[name] = self._compute(name)
            return value

    def _compute(self, name: str) -> Values:
        simple = SIMPLE.get(name)
        if simple is not None:
            return simple(self.ctx, self.bucket)
        if name.startswith("s3:requestobjecttag/"):
            return _tags(self.ctx.request_tags(), name.split("/", 1)[1])
        if name.startswith("s3:existingobjecttag/"):
            return _tags(self.existing_tags, name.split("/", 1)[1])
        if name.startswith("s3:x-amz-"):
            return _one(self.ctx.headers.get(name[3:]))
        return None
