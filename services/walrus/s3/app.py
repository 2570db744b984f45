"""The S3 front door on Walrus's aiohttp app: a middleware that takes every request that is not an internal
call (`/internal/...` signed by a component, `/healthz`, or a path another part of Walrus registered in
`passthrough`), authenticates it, routes it and turns every failure into S3 error XML."""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import HttpVersion11, web

from common.signing import HEADER_CERT, ReplayCache, TrustStore
from services.walrus.s3 import auth, cors, routes, routing
from services.walrus.s3.access_log import AccessLogger
from services.walrus.s3.context import Ctx
from services.walrus.s3.errors import S3Error, error_document
from services.walrus.s3.identity import KeyResolver
from services.walrus.s3.storage_errors import to_s3
from services.walrus.storage import StorageBackend, StorageError

log = logging.getLogger("koala.walrus.s3")
MAX_HEADER_BYTES = 16 << 10  # all headers together; user metadata has its own 2 KiB limit


_REQUEST_PREFIX = secrets.token_hex(4).upper()  # this process's; a counter numbers its requests
_request_numbers = itertools.count(1)


def next_request_id() -> str:
    """A request id unique to this process run (cheaper than fresh random bytes for every request)."""
    return f"{_REQUEST_PREFIX}{next(_request_numbers) & 0xFFFFFFFF:08X}"


@dataclass
class Limits:
    max_object_size: int = 5 << 30
    max_part_size: int = 5 << 30
    min_part_size: int = 5 << 20
    max_user_metadata: int = 2048
    bucket_quota: int = 0  # bytes, 0 for none
    account_quota: int = 0
    max_buckets: int = 100


@dataclass
class S3App:
    storage: StorageBackend
    keys: KeyResolver
    trust: TrustStore
    service_id: str
    domains: tuple[str, ...] = ("localhost",)
    limits: Limits = field(default_factory=Limits)
    replay: ReplayCache = field(default_factory=ReplayCache)
    passthrough: list[str] = field(default_factory=lambda: ["/healthz", "/internal/identity"])
    log_flush_seconds: float = 60.0
    access_log: AccessLogger = field(init=False)

    def __post_init__(self) -> None:
        self.access_log = AccessLogger(self.storage, self.log_flush_seconds)

    async def close(self) -> None:
        """Deliver the access log lines still waiting."""
        await self.access_log.close()

    def install(self, app: web.Application) -> None:
        """Take every request the app's other routes do not; call after they are all added. The catch-all route
        keeps aiohttp from answering `Expect: 100-continue` before the S3 layer has authenticated the request."""
        app.middlewares.append(self.middleware)
        app.router.add_route("*", "/{tail:.*}", self._unrouted, expect_handler=self._no_early_continue)

    @staticmethod
    async def _unrouted(request: web.Request) -> web.StreamResponse:
        raise web.HTTPNotFound()

    @staticmethod
    async def _no_early_continue(request: web.Request) -> None:
        return None

    @staticmethod
    async def _send_continue(request: web.Request) -> bool:
        """Answer `Expect: 100-continue` now that the request is authenticated; True if it was asked for."""
        if request.headers.get("Expect", "").lower() != "100-continue" or request.version != HttpVersion11:
            return False
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper has not started
        return True

    async def _check_expected_owner(self, ctx: Ctx) -> None:
        """x-amz-expected-bucket-owner (and x-amz-source-expected-bucket-owner for copies): AccessDenied when
        the bucket belongs to another account."""
        checks = [(ctx.headers.get("x-amz-expected-bucket-owner"), ctx.bucket)]
        source = ctx.headers.get("x-amz-copy-source")
        if source:
            checks.append((ctx.headers.get("x-amz-source-expected-bucket-owner"), source.lstrip("/").split("/")[0]))
        for expected, bucket in checks:
            if expected is None or not bucket:
                continue
            info = await self.storage.get_bucket(bucket) if len(bucket) <= 63 else None
            if info is not None and info.owner_id != expected.strip():
                raise S3Error("AccessDenied")

    def is_passthrough(self, request: web.BaseRequest) -> bool:
        """True for what other parts of Walrus serve: internal calls signed by a component and the paths in
        `passthrough`, never on a bucket's virtual host."""
        target = request.raw_path
        if target.startswith("/") and not target.startswith(("/internal/", *self.passthrough)):
            return False  # the common case, an S3 path, decided at a glance
        path = routing.origin_form(target).partition("?")[0]
        if routing.host_bucket(request.host, self.domains):
            return False
        if path.startswith("/internal/") and HEADER_CERT in request.headers:
            return True
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.passthrough)

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self.is_passthrough(request):
            return await handler(request)
        return await self.handle(request)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        request_id = next_request_id()
        started = time.time()
        ctx: Ctx | None = None
        resource = "/"
        continued = False
        try:
            header_bytes = sum(len(k) + len(v) + 4 for k, v in request.raw_headers)
            if header_bytes > MAX_HEADER_BYTES:
                raise S3Error("RequestHeaderSectionTooLarge", MaxSizeAllowed=MAX_HEADER_BYTES)
            raw_path, _, raw_query = routing.origin_form(request.raw_path).partition("?")
            read = request.method in routing.REMEMBERED_METHODS
            bucket, key = routing.locate(raw_path, request.host, self.domains, read)
            resource = f"/{bucket}/{key}" if key else f"/{bucket}"
            query = routing.parse_query(raw_query, remember=read)
            ctx = Ctx(self, request, request_id, bucket, key, query, raw_path, raw_query)
            if "Origin" in request.headers:  # only a page on another origin gets CORS headers
                ctx.response_headers.update(await cors.answer_headers(ctx))
            if request.method != "OPTIONS":  # a CORS preflight is never signed, even when its URL is presigned
                await auth.authenticate(ctx)
            route = routes.pick(request.method, bucket, key, ctx.query, request.headers)
            ctx.operation = route.operation
            if "x-amz-expected-bucket-owner" in request.headers or "x-amz-copy-source" in request.headers:
                await self._check_expected_owner(ctx)
            continued = "Expect" in request.headers and await self._send_continue(request)
            response = await route.handler(ctx)
        except (S3Error, StorageError) as caught:
            if isinstance(caught, S3Error):
                err = caught
            elif ctx is not None:  # the one mapping of storage errors (handlers catch only where S3 differs)
                err = await to_s3(caught, ctx)
            else:
                err = S3Error("InternalError")
            if ctx is not None:
                ctx.error_code = err.code
            if err.status >= 500:
                log.warning("%s %s %s: %s %s", request_id, request.method, resource, err.code, err.message)
            response = self._error(request, err, resource, request_id)
        except ConnectionError:  # the client went away, or a stream broke after its headers were sent
            raise
        except Exception:
            log.exception("%s %s %s failed", request_id, request.method, resource)
            response = self._error(request, S3Error("InternalError"), resource, request_id)
        if not response.prepared:
            response.headers["x-amz-request-id"] = request_id
            response.headers["x-amz-id-2"] = request_id
            if ctx is not None and ctx.response_headers:
                response.headers.update(ctx.response_headers)
            if not continued and request.headers.get("Expect") and request.can_read_body:
                response.force_close()  # the client holds its body back: this connection cannot go on
        if ctx is not None:
            await self.access_log.record(ctx, response, started)
        return response

    @staticmethod
    def _error(request: web.Request, err: S3Error, resource: str, request_id: str) -> web.Response:
        headers = {"x-amz-request-id": request_id, **err.headers}
        if err.status == 304 or request.method == "HEAD":
            return web.Response(status=err.status, headers=headers)
        return web.Response(
            status=err.status,
            body=error_document(err, resource, request_id),
            content_type="application/xml",
            headers=headers,
        )
