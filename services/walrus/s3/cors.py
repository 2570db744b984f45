"""CORS: Put/Get/DeleteBucketCors, the preflight (OPTIONS) and the CORS headers on answers to other requests.

The configuration is kept as JSON rules (kind "cors") and compiled once; the first rule whose origin, method
and headers match a request decides, as S3 does."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from services.walrus.s3 import access
from services.walrus.s3.buckets import load_bucket
from services.walrus.s3.context import Ctx
from services.walrus.s3.errors import S3Error
from services.walrus.s3.objects import _small_body
from services.walrus.s3.xml import el, parse_xml, raw, xml_response

KIND = "cors"
METHODS = ("GET", "PUT", "POST", "DELETE", "HEAD")
MAX_RULES = 100
MAX_VALUES = 100  # origins, headers or expose headers per rule
MAX_VALUE_LENGTH = 1024


def _pattern(text: str, ignore_case: bool) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(p) for p in text.split("*")), re.IGNORECASE if ignore_case else 0)


@dataclass
class Rule:
    rule_id: str
    origins: tuple[str, ...]
    methods: tuple[str, ...]
    headers: tuple[str, ...]
    expose: tuple[str, ...]
    max_age: int | None
    origin_patterns: list[re.Pattern[str]] = field(init=False, repr=False)
    header_patterns: list[re.Pattern[str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.origin_patterns = [_pattern(o, False) for o in self.origins]
        self.header_patterns = [_pattern(h, True) for h in self.headers]

    @classmethod
    def from_json(cls, item: list[Any]) -> Rule:
        rule_id, origins, methods, headers, expose, max_age = item
        return cls(rule_id, tuple(origins), tuple(methods), tuple(headers), tuple(expose), max_age)

    def matches(self, origin: str, method: str, headers: list[str]) -> bool:
        if method not in self.methods or not any(p.fullmatch(origin) for p in self.origin_patterns):
            return False
        return all(any(p.fullmatch(h) for p in self.header_patterns) for h in headers)

    def to_json(self) -> list[Any]:
        return [self.rule_id, self.origins, self.methods, self.headers, self.expose, self.max_age]

    def to_xml(self) -> str:
        parts = [el("ID", self.rule_id)] if self.rule_id else []
        parts += [el("AllowedOrigin", o) for o in self.origins]
        parts += [el("AllowedMethod", m) for m in self.methods]
        parts += [el("AllowedHeader", h) for h in self.headers]
        parts += [el("ExposeHeader", h) for h in self.expose]
        if self.max_age is not None:
            parts.append(el("MaxAgeSeconds", self.max_age))
        return el("CORSRule", raw(*parts))


def _texts(node: ET.Element, tag: str) -> tuple[str, ...]:
    values = tuple((child.text or "").strip() for child in node.findall(tag))
    if len(values) > MAX_VALUES or any(len(v) > MAX_VALUE_LENGTH for v in values):
        raise S3Error("MalformedXML", f"too many or too long {tag} values")
    return values


def parse_configuration(body: bytes) -> list[Rule]:
    root = parse_xml(body)
    if root.tag != "CORSConfiguration":
        raise S3Error("MalformedXML")
    nodes = root.findall("CORSRule")
    if not nodes:
        raise S3Error("MalformedXML", "a CORS configuration needs at least one CORSRule")
    if len(nodes) > MAX_RULES:
        raise S3Error("MalformedXML", f"at most {MAX_RULES} CORS rules")
    rules = []
    for node in nodes:
        origins, methods = _texts(node, "AllowedOrigin"), _texts(node, "AllowedMethod")
        if not origins or not methods:
            raise S3Error("MalformedXML", "each CORSRule needs an AllowedOrigin and an AllowedMethod")
        for method in methods:
            if method not in METHODS:
                raise S3Error(
                    "InvalidRequest", f"Found unsupported HTTP method in CORS config. Unsupported method is {method}"
                )
        for origin in origins:
            if origin.count("*") > 1:
                raise S3Error("InvalidRequest", f'AllowedOrigin "{origin}" can not have more than one wildcard.')
        headers = _texts(node, "AllowedHeader")
        for header in headers:
            if header.count("*") > 1:
                raise S3Error("InvalidRequest", f'AllowedHeader "{header}" can not have more than one wildcard.')
        max_age_text = (node.findtext("MaxAgeSeconds") or "").strip()
        max_age = None
        if max_age_text:
            if not max_age_text.isdigit() or len(max_age_text) > 10:
                raise S3Error("MalformedXML", "MaxAgeSeconds must be a non-negative integer")
            max_age = int(max_age_text)
        rule_id = (node.findtext("ID") or "").strip()
        if len(rule_id) > 255:
            raise S3Error("InvalidArgument", "a CORS rule ID is at most 255 characters")
        rules.append(Rule(rule_id, origins, methods, headers, _texts(node, "ExposeHeader"), max_age))
    return rules


_compiled: OrderedDict[str, list[Rule]] = OrderedDict()


async def rules_of(ctx: Ctx, bucket: str) -> list[Rule] | None:
    document = await ctx.app.storage.get_bucket_config(bucket, KIND)
    if document is None:
        return None
    found = _compiled.get(document)
    if found is None:
        found = _compiled[document] = [Rule.from_json(item) for item in json.loads(document)]
        if len(_compiled) > 1024:
            _compiled.popitem(last=False)
    return found


def _allow_headers(rule: Rule, origin: str) -> dict[str, str]:
    wildcard = rule.origins == ("*",)
    headers = {
        "Access-Control-Allow-Origin": "*" if wildcard else origin,
        "Access-Control-Allow-Methods": ", ".join(rule.methods),
        "Vary": "Origin, Access-Control-Request-Headers, Access-Control-Request-Method",
    }
    if not wildcard:
        headers["Access-Control-Allow-Credentials"] = "true"
    if rule.expose:
        headers["Access-Control-Expose-Headers"] = ", ".join(rule.expose)
    if rule.max_age is not None:
        headers["Access-Control-Max-Age"] = str(rule.max_age)
    return headers


async def answer_headers(ctx: Ctx) -> dict[str, str]:
    """The CORS headers for an ordinary request from a page on another origin (none if no rule matches)."""
    origin = ctx.headers.get("Origin")
    if not origin or not ctx.bucket or len(ctx.bucket) > 63:
        return {}
    try:
        rules = await rules_of(ctx, ctx.bucket)
    except Exception:  # a missing bucket or a bad name: the handler answers for it
        return {}
    method = ctx.request.method
    for rule in rules or ():
        if rule.matches(origin, method, []):
            return _allow_headers(rule, origin)
    return {}


def _forbidden(message: str) -> S3Error:
    return S3Error("AccessForbidden", f"CORSResponse: {message}", status=403)


async def options_object(ctx: Ctx) -> web.Response:
    origin = ctx.headers.get("Origin")
    if not origin:
        raise S3Error("BadRequest", "Insufficient information. Origin request header needed.")
    method = ctx.headers.get("Access-Control-Request-Method")
    if not method:
        raise S3Error("BadRequest", "Invalid Access-Control-Request-Method: null")
    wanted = [h.strip().lower() for h in ctx.headers.get("Access-Control-Request-Headers", "").split(",") if h.strip()]
    bucket = await load_bucket(ctx)
    rules = await rules_of(ctx, bucket.name)
    if not rules:
        raise _forbidden("CORS is not enabled for this bucket.")
    for rule in rules:
        if rule.matches(origin, method, wanted):
            headers = _allow_headers(rule, origin)
            if wanted:
                headers["Access-Control-Allow-Headers"] = ", ".join(wanted)
            return web.Response(headers=headers)
    raise _forbidden(
        "This CORS request is not allowed. This is usually because the evalution of Origin, request method / "
        "Access-Control-Request-Method or Access-Control-Request-Headers are not whitelisted by the resource's "
        "CORS spec."
    )


async def put_bucket_cors(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:PutBucketCORS", bucket, access.OWNER)
    rules = parse_configuration(await _small_body(ctx))
    await ctx.app.storage.put_bucket_config(bucket.name, KIND, json.dumps([r.to_json() for r in rules]))
    return web.Response()


async def get_bucket_cors(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:GetBucketCORS", bucket, access.OWNER)
    rules = await rules_of(ctx, bucket.name)
    if rules is None:
        raise S3Error("NoSuchCORSConfiguration", BucketName=bucket.name)
    return xml_response("CORSConfiguration", "".join(r.to_xml() for r in rules))


async def delete_bucket_cors(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:PutBucketCORS", bucket, access.OWNER)
    await ctx.app.storage.put_bucket_config(bucket.name, KIND, None)
    return web.Response(status=204)
