"""The S3 front door on Walrus's aiohttp app: a middleware that takes every request that is not an internal
call (`/internal/...` signed by a component, `/healthz`, or a path another part of Walrus registered in
`passthrough`), authenticates it, routes it and turns every failure into S3 error XML."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field

from aiohttp import web

from common.signing import HEADER_CERT, ReplayCache, TrustStore
from services.walrus.s3 import auth, routing
from services.walrus.s3.context import Ctx
from services.walrus.s3.errors import S3Error, error_document
from services.walrus.s3.identity import KeyResolver
from services.walrus.storage import StorageBackend

log = logging.getLogger("koala.walrus.s3")
MAX_HEADER_BYTES = 16 << 10  # all headers together; user metadata has its own 2 KiB limit


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

    def install(self, app: web.Application) -> None:
        app.middlewares.append(self.middleware)

    def _is_passthrough(self, request: web.Request) -> bool:
        path = routing.origin_form(request.raw_path).partition("?")[0]
        if routing.host_bucket(request.host, self.domains):
            return False
        if path.startswith("/internal/") and HEADER_CERT in request.headers:
            return True
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.passthrough)

    @web.middleware
    async def middleware(self, request: web.Request, handler) -> web.StreamResponse:
        if self._is_passthrough(request):
            return await handler(request)
        return await self.handle(request)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        request_id = secrets.token_hex(8).upper()
        ctx: Ctx | None = None
        resource = "/"
        try:
            header_bytes = sum(len(k) + len(v) + 4 for k, v in request.raw_headers)
            if header_bytes > MAX_HEADER_BYTES:
                raise S3Error("RequestHeaderSectionTooLarge", MaxSizeAllowed=MAX_HEADER_BYTES)
            raw_path, _, raw_query = routing.origin_form(request.raw_path).partition("?")
            bucket, key = routing.locate(raw_path, request.host, self.domains)
            resource = f"/{bucket}/{key}" if key else f"/{bucket}"
            ctx = Ctx(self, request, request_id, bucket, key, routing.parse_query(raw_query), raw_path, raw_query)
            await auth.authenticate(ctx)
            handler = routing.pick(request.method, bucket, key, ctx.query, request.headers)
            response = await handler(ctx)
        except S3Error as err:
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
