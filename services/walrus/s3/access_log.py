"""Bucket logging (server access logs), as Eucalyptus's Walrus and S3 have it: Put/GetBucketLogging, and the
delivery of one line per request on a logged bucket to objects `<TargetPrefix>YYYY-mm-DD-HH-MM-SS-<random>` in
the target bucket, in S3's server access log format.

Lines are gathered in memory per target and written every `flush_seconds` (or sooner when many are waiting) and
when Walrus stops. Delivery is best effort, as S3's is: lines of the last interval are lost if the process is
killed."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import secrets
import time
from dataclasses import dataclass, field

from aiohttp import web

from services.walrus.s3 import access
from services.walrus.s3 import acl as acls
from services.walrus.s3.buckets import load_bucket
from services.walrus.s3.context import Ctx
from services.walrus.s3.errors import S3Error
from services.walrus.s3.objects import _small_body
from services.walrus.s3.xml import el, parse_xml, raw, xml_response
from services.walrus.storage import NoSuchBucket, ObjectSpec, StorageBackend

log = logging.getLogger("koala.walrus.access-log")
KIND = "logging"
MAX_PREFIX = 900
FLUSH_LINES = 10_000  # write early when this many lines wait for one target
# Sub-resources named in the operation field (REST.GET.ACL, ...), as S3 names them.
OPERATION_NAMES = {
    "acl": "ACL",
    "policy": "BUCKETPOLICY",
    "cors": "CORS",
    "tagging": "TAGGING",
    "logging": "LOGGING_STATUS",
    "versioning": "VERSIONING",
    "uploads": "UPLOADS",
    "uploadId": "UPLOAD",
    "location": "LOCATION",
    "publicAccessBlock": "PUBLIC_ACCESS_BLOCK",
    "policyStatus": "POLICY_STATUS",
    "versions": "VERSIONS",
    "attributes": "OBJECT_ATTRIBUTES",
}


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"' if text else "-"


def operation(ctx: Ctx) -> str:
    method = ctx.request.method
    for name, label in OPERATION_NAMES.items():
        if name in ctx.query:
            return f"REST.{method}.{label}"
    if method == "POST" and not ctx.key:
        return "REST.POST.UPLOAD" if "delete" not in ctx.query else "REST.POST.MULTI_OBJECT_DELETE"
    return f"REST.{method}.{'OBJECT' if ctx.key else 'BUCKET'}"


def line(ctx: Ctx, response: web.StreamResponse, started: float) -> str:
    """One access log record, S3's fields in S3's order."""
    now = time.time()
    request = ctx.request
    sent = response.content_length if response.content_length is not None else 0
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("[%d/%b/%Y:%H:%M:%S +0000]")
    fields = [
        ctx.bucket_owner or "-",
        ctx.bucket,
        stamp,
        request.remote or "-",
        ctx.requester.account_id or "-",
        ctx.request_id,
        operation(ctx),
        ctx.key or "-",
        _quoted(f"{request.method} {request.raw_path} HTTP/{request.version.major}.{request.version.minor}"),
        str(response.status),
        ctx.error_code or "-",
        str(sent) if sent else "-",
        request.headers.get("Content-Length", "-"),
        str(int((now - started) * 1000)),
        "-",
        _quoted(request.headers.get("Referer", "")),
        _quoted(request.headers.get("User-Agent", "")),
        ctx.query.get("versionId", "-"),
        ctx.request_id,
        {"AWS4-HMAC-SHA256": "SigV4", "AWS": "SigV2"}.get(ctx.signature_version, "-"),
        "-",
        {"REST-HEADER": "AuthHeader", "REST-QUERY-STRING": "QueryString", "POST": "AuthHeader"}.get(ctx.auth_type, "-"),
        request.host or "-",
        "-",
        "-",
        "-",
    ]
    return " ".join(fields) + "\n"


@dataclass
class AccessLogger:
    storage: StorageBackend
    flush_seconds: float = 60.0
    _pending: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    async def record(self, ctx: Ctx, response: web.StreamResponse, started: float) -> None:
        """Queue the request's line if its bucket is logged; never fails the request."""
        if not ctx.bucket or len(ctx.bucket) > 63:
            return
        try:
            document = await self.storage.get_bucket_config(ctx.bucket, KIND)
            if document is None:
                return
            target = json.loads(document)
            if not ctx.bucket_owner:
                bucket = await self.storage.get_bucket(ctx.bucket)
                ctx.bucket_owner = bucket.owner_id if bucket else ""
            lines = self._pending.setdefault((target["bucket"], target["prefix"]), [])
            lines.append(line(ctx, response, started))
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._run())
            if len(lines) >= FLUSH_LINES:
                await self.flush()
        except Exception:
            log.exception("%s: access log record failed", ctx.request_id)

    async def _run(self) -> None:
        while self._pending:
            await asyncio.sleep(self.flush_seconds)
            await self.flush()

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for (bucket, prefix), lines in pending.items():
            try:
                await self._deliver(bucket, prefix, "".join(lines).encode())
            except Exception as err:  # the target may have gone: S3 drops the records too
                log.warning("access log delivery to %s failed (%d lines): %s", bucket, len(lines), err)

    async def _deliver(self, bucket: str, prefix: str, body: bytes) -> None:
        target = await self.storage.get_bucket(bucket)
        if target is None:
            raise NoSuchBucket(bucket)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d-%H-%M-%S")
        key = f"{prefix}{stamp}-{secrets.token_hex(8).upper()}"
        acl = acls.canned("private", target.owner_id, target.owner_name)
        spec = ObjectSpec(target.owner_id, target.owner_name, acl, "text/plain")
        data = await self.storage.new_data(())
        try:
            await data.write(body)
            await data.finish()
            await self.storage.commit_object(bucket, key, data, spec)
        finally:
            await data.abort()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.flush()


# --- PutBucketLogging / GetBucketLogging ------------------------------------------------------------------
async def put_bucket_logging(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:PutBucketLogging", bucket, access.OWNER)
    root = parse_xml(await _small_body(ctx))
    if root.tag != "BucketLoggingStatus":
        raise S3Error("MalformedXML")
    enabled = root.find("LoggingEnabled")
    document = None
    if enabled is not None:
        target_name = (enabled.findtext("TargetBucket") or "").strip()
        prefix = enabled.findtext("TargetPrefix") or ""
        if not target_name:
            raise S3Error("MalformedXML", "LoggingEnabled needs a TargetBucket")
        if len(prefix) > MAX_PREFIX:
            raise S3Error("InvalidArgument", "TargetPrefix is too long", ArgumentName="TargetPrefix")
        target = await ctx.app.storage.get_bucket(target_name) if len(target_name) <= 63 else None
        if target is None:
            raise S3Error("InvalidTargetBucketForLogging", "The target bucket for logging does not exist",
                          TargetBucket=target_name[:63])  # fmt: skip
        if target.owner_id != bucket.owner_id:
            raise S3Error(
                "InvalidTargetBucketForLogging",
                "The owner for the bucket to be logged and the target bucket must be the same.",
                TargetBucket=target_name,
            )
        document = json.dumps({"bucket": target_name, "prefix": prefix})
    await ctx.app.storage.put_bucket_config(bucket.name, KIND, document)
    return web.Response()


async def get_bucket_logging(ctx: Ctx) -> web.Response:
    bucket = await load_bucket(ctx)
    await access.check(ctx, "s3:GetBucketLogging", bucket, access.OWNER)
    document = await ctx.app.storage.get_bucket_config(bucket.name, KIND)
    body = ""
    if document is not None:
        target = json.loads(document)
        body = el("LoggingEnabled", raw(el("TargetBucket", target["bucket"]), el("TargetPrefix", target["prefix"])))
    return xml_response("BucketLoggingStatus", body)
