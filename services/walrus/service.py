"""Walrus: the S3-compatible object store and bundled-image cache.

`self.storage` is the storage backend (see services.walrus.storage for its API and change hooks);
`self.s3` the S3 front door (services.walrus.s3.app), which serves every request that is not an internal
call. Other Walrus parts that register their own routes on `self.app` add their path prefix to
`self.s3.passthrough` so the S3 layer leaves them alone.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from concurrent.futures import ThreadPoolExecutor

import uvloop
from aiohttp import web

from common.service import RequestHandlerFn, Service
from services.walrus import images
from services.walrus.config import WalrusConfig
from services.walrus.lifecycle.sweeper import LifecycleSweeper
from services.walrus.s3.app import Limits, S3App
from services.walrus.s3.errors import http_error as s3_error_document
from services.walrus.s3.identity import KeyResolver
from services.walrus.storage import EmbeddedBackend, StorageBackend
from services.walrus.storage.blobs import Blobs

# aiohttp's own header limits answer with plain-text 400s; these are loose enough that the S3 layer sees
# oversized headers and answers them in S3's format (RequestHeaderSectionTooLarge).
MAX_LINE = 256 << 10
MAX_FIELD = 256 << 10
MAX_HEADERS = 1000
IO_THREADS = 64
GIL_SWITCH_SECONDS = 0.0005  # longest a busy thread keeps the interpreter lock from a waiting one (default 0.005)
READ_BUFFER = 1 << 20  # request body buffering per connection: fewer pauses of the socket on big uploads
log = logging.getLogger("koala.service")


def blob_store(config: WalrusConfig) -> Blobs | None:
    """Where object data is kept, as configured (None: local files, the backend's default)."""
    if config.KOALA_WALRUS_STORAGE == "local":
        return None
    from services.walrus.storage.rados_data import RadosBlobs  # only a rados Walrus needs librados

    namespace = config.KOALA_WALRUS_RADOS_NAMESPACE or config.KOALA_SERVICE_ID
    return RadosBlobs(config, config.KOALA_WALRUS_RADOS_POOL, namespace)


def storage_backend(config: WalrusConfig) -> StorageBackend:
    """The embedded backend (metadata in SQLite), or with KOALA_WALRUS_DATABASE_URL the shared one."""
    root, blobs = config.KOALA_STATE_DIR / "objects", blob_store(config)
    if not config.KOALA_WALRUS_DATABASE_URL:
        return EmbeddedBackend(root, fsync=config.KOALA_WALRUS_FSYNC, blobs=blobs)
    from services.walrus.storage.rados_data import RadosBlobs
    from services.walrus.storage.shared import SharedBackend

    assert isinstance(blobs, RadosBlobs)  # the configuration checked that shared metadata comes with rados
    return SharedBackend(root, config.KOALA_WALRUS_DATABASE_URL, blobs, config.KOALA_WALRUS_SHARED_REMOVAL_DELAY)


class WalrusService(Service):
    role = "walrus"
    config_class = WalrusConfig
    config: WalrusConfig
    answer_grace = None  # S3 clients do not half-close, and an upload cut short must fail at once
    render_http_error = staticmethod(s3_error_document)
    loop_factory = uvloop.new_event_loop  # libuv's loop: a third more small GETs per second than asyncio's
    gc_young_threshold = 20_000  # a tenth of the collector's passes: about 4 % less CPU per 4 KiB PUT

    def __init__(self, config: WalrusConfig):
        super().__init__(config)
        self.storage: StorageBackend = storage_backend(config)
        keys = KeyResolver(
            self.client,
            config.KOALA_CLC_URL,
            config.KOALA_WALRUS_KEY_CACHE_SECONDS,
            config.KOALA_WALRUS_CREDENTIALS_FILE,
        )
        limits = Limits(
            max_object_size=config.KOALA_WALRUS_MAX_OBJECT_SIZE,
            max_part_size=config.KOALA_WALRUS_MAX_OBJECT_SIZE,
            min_part_size=config.KOALA_WALRUS_MIN_PART_SIZE,
            bucket_quota=config.KOALA_WALRUS_BUCKET_QUOTA,
            account_quota=config.KOALA_WALRUS_ACCOUNT_QUOTA,
            max_buckets=config.KOALA_WALRUS_MAX_BUCKETS,
        )
        domains = tuple(d.strip().lower().strip(".") for d in config.KOALA_WALRUS_DOMAINS.split(",") if d.strip())
        self.s3 = S3App(
            self.storage,
            keys,
            self.trust,
            self.identity.id,
            domains,
            limits,
            log_flush_seconds=config.KOALA_WALRUS_LOG_FLUSH_SECONDS,
        )
        self.lifecycle = LifecycleSweeper(
            self.storage, config.KOALA_WALRUS_LIFECYCLE_INTERVAL, config.KOALA_WALRUS_LIFECYCLE_DAY
        )
        images.install(self)  # bundled images: ValidateImage, CacheImage, FlushImage, GetDecryptedImage
        self.s3.install(self.app)  # last: its catch-all route takes what no other route does

    def peer_list(self) -> list[tuple[str, str]]:
        return [(self.config.KOALA_CLC_URL, "clc")]

    async def on_start(self) -> None:
        # Disk writes and fsyncs wait in threads: enough of them that concurrent uploads fsync in parallel.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(IO_THREADS, thread_name_prefix="walrus-io"))
        await self.storage.start()
        self.lifecycle.start()
        # The event loop gives up the interpreter lock in every socket write and hash of a body, and the database
        # thread (running a batch of transactions) then kept it for up to the 5 ms default before handing it back:
        # a stall of every request in flight. A short interval bounds that wait.
        sys.setswitchinterval(GIL_SWITCH_SECONDS)

    async def on_stop(self) -> None:
        await self.lifecycle.stop()
        await self.s3.close()
        await self.storage.close()

    def request_handler(self, app_handler: RequestHandlerFn) -> RequestHandlerFn:
        """S3 requests go straight to the S3 layer (marked by the connection guard for its timeouts): aiohttp's
        router, its catch-all match and two middleware layers were a tenth of a small GET. The rest (internal
        calls, /healthz, images) go through the application as before."""
        s3, mark = self.s3, self.guard.middleware

        async def serve(request: web.BaseRequest) -> web.StreamResponse:
            if s3.is_passthrough(request):
                return await app_handler(request)
            # the application's request factory made a web.Request; the guard marks it for its timeouts
            answer: web.StreamResponse = await mark(request, s3.handle)  # type: ignore[arg-type]
            return answer

        return serve

    def runner_options(self) -> dict[str, object]:
        # Header limits raised (see MAX_FIELD), and a bigger read buffer for uploads.
        return {
            **super().runner_options(),
            "max_line_size": MAX_LINE,
            "max_field_size": MAX_FIELD,
            "max_headers": MAX_HEADERS,
            "read_bufsize": READ_BUFFER,
        }
