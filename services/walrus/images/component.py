"""Walrus's bundled-image operations, wired into the running service.

CLC-facing RPCs (role clc): ValidateImage, CacheImage, FlushImage. NC-facing (role nc, and cc for a remote zone
that re-bundles a local image for the remote cloud): GetDecryptedImage, a
signed streaming call: the request is verified exactly like every internal call (common.signing.verify_request:
CA chain, role, recipient, date, nonce, body hash), and the response is signed over a descriptor of what is sent
(status, byte range, total size, SHA-256 of the whole image) instead of the body's hash, since the body is sent
with sendfile straight from the cache and its hash is only known for the whole image. The NC checks the signed
headers before reading, and the image's SHA-256 once it has every byte (also after a resumed download).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from common import pki, signing
from common.bodies import BodyTooLarge, read_bounded
from common.bundle import keys
from common.bundle.errors import BundleError
from common.messages.identity import ResolveCertificateRequest, ResolveCertificateResponse
from common.messages.walrus_images import (
    GET_DECRYPTED_IMAGE_PATH,
    HEADER_IMAGE_RANGE,
    HEADER_IMAGE_SHA256,
    CacheImageRequest,
    CacheImageResponse,
    FlushImageRequest,
    FlushImageResponse,
    GetDecryptedImageRequest,
    ValidateImageRequest,
    ValidateImageResponse,
    image_descriptor,
)
from common.rpc import Caller, RpcError, error_body
from common.signing import AuthError
from services.walrus.images.bundles import BundleValidator, RememberedSigners, ValidBundle
from services.walrus.images.cache import ImageCache
from services.walrus.images.sendfile import send_range
from services.walrus.storage import ChangeEvent

log = logging.getLogger("koala.walrus.images")
RESOLVE_TTL = 30.0  # seconds: a revoked certificate stops working within this time
MAX_REQUEST = 64 << 10
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
DECRYPTED_IMAGE_ROLES = frozenset({"nc", "cc"})  # nodes boot images; a remote zone's CC re-bundles them


class ImagesComponent:
    def __init__(self, service: Any):
        self.service = service
        config = service.config
        self.cache_dir = Path(config.KOALA_WALRUS_IMAGE_CACHE_DIR or Path(config.KOALA_STATE_DIR) / "image-cache")
        self.cache = ImageCache(self.cache_dir, int(config.KOALA_WALRUS_IMAGE_CACHE_MB) << 20)
        pki_dir = pki.PkiDir(Path(config.KOALA_PKI_DIR))
        self.cloud_cert = keys.load_certificate(pki_dir.path / pki.CLOUD_CERT_FILE)
        self.cloud_key = keys.load_private_key(pki_dir.path / pki.CLOUD_KEY_FILE)
        self.validator: BundleValidator | None = None
        self._resolved: dict[str, tuple[float, ResolveCertificateResponse]] = {}
        rpc = service.rpc
        rpc.add("ValidateImage", self.validate_image, {"clc"}, ValidateImageRequest)
        rpc.add("CacheImage", self.cache_image, {"clc"}, CacheImageRequest)
        rpc.add("FlushImage", self.flush_image, {"clc"}, FlushImageRequest)
        service.app.router.add_post(GET_DECRYPTED_IMAGE_PATH, self.get_decrypted_image)
        s3 = getattr(service, "s3", None)
        if s3 is not None:  # the S3 front door leaves this path to us, signed or not (we answer in JSON)
            s3.passthrough.append(GET_DECRYPTED_IMAGE_PATH)
        service.app.on_startup.append(self._start)
        service.app.on_cleanup.append(self._stop)

    # ------------------------------------------------------------ life cycle

    async def _start(self, _: web.Application) -> None:
        await asyncio.to_thread(self.cache_dir.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(self.cache.load)
        storage = getattr(self.service, "storage", None)  # opened by on_start, which runs before the app starts
        if storage is None:
            log.error("Walrus has no object store: only already cached images can be served")
            return
        signers = await asyncio.to_thread(RememberedSigners, self.cache_dir / "signers.list")
        self.validator = BundleValidator(storage, self.cloud_cert, self.cloud_key, self._resolve, signers)
        storage.change_hooks.append(self._on_change)
        log.info("image cache %s: %d images, %d bytes", self.cache_dir, len(self.cache.entries), self.cache.used)

    async def _stop(self, _: web.Application) -> None:
        await self.cache.close()

    def _on_change(self, event: ChangeEvent) -> None:
        self.cache.invalidate(event.bucket, event.key)

    async def _resolve(self, pem: str) -> ResolveCertificateResponse:
        now = time.monotonic()
        cached = self._resolved.get(pem)
        if cached and now - cached[0] < RESOLVE_TTL:
            return cached[1]
        answer = await self.service.client.call(
            self.service.config.KOALA_CLC_URL,
            "ResolveCertificate",
            ResolveCertificateRequest(certificate_pem=pem),
            ResolveCertificateResponse,
            idempotent=True,
            expect_role="clc",
        )
        if len(self._resolved) > 1000:
            self._resolved.clear()
        self._resolved[pem] = (now, answer)
        return answer  # type: ignore[no-any-return]

    # ------------------------------------------------------------ CLC operations

    def _validator(self) -> BundleValidator:
        if self.validator is None:
            raise RpcError(503, "NotReady", "the image service is starting")
        return self.validator

    async def validate_image(self, request: ValidateImageRequest, caller: Caller) -> ValidateImageResponse:
        try:
            bundle = await self._validator().validate(
                request.bucket, request.manifest_key, request.certificates, request.check_part_digests
            )
        except BundleError as err:
            raise RpcError(err.status, err.code, err.message) from None
        return _describe(bundle)

    async def cache_image(self, request: CacheImageRequest, caller: Caller) -> CacheImageResponse:
        validator = self._validator()
        certificates = list(request.certificates)

        async def producer(temp: Path, flight: Any, reserve: Any) -> Any:
            return await validator.producer(certificates, temp, flight, reserve)

        try:
            if not request.wait and self.cache.lookup(request.bucket, request.manifest_key) is None:
                # Validate now, so the CLC hears about a bad bundle at once; decrypt in the background.
                bundle = await validator.validate(request.bucket, request.manifest_key, certificates, False)
                await self.cache.get(request.bucket, request.manifest_key, producer, wait=False)
                return CacheImageResponse(state="caching", size=bundle.manifest.size)
            entry = await self.cache.get(request.bucket, request.manifest_key, producer)
        except BundleError as err:
            raise RpcError(err.status, err.code, err.message) from None
        assert entry is not None
        return CacheImageResponse(state="cached", size=entry.size, image_sha256=entry.image_sha256)

    async def flush_image(self, request: FlushImageRequest, caller: Caller) -> FlushImageResponse:
        return FlushImageResponse(flushed=self.cache.flush(request.bucket, request.manifest_key))

    # ------------------------------------------------------------ NC download (signed streaming call)

    async def get_decrypted_image(self, request: web.Request) -> web.StreamResponse:
        service = self.service
        nonce = request.headers.get(signing.HEADER_NONCE, "")
        caller_fp = request.headers.get(signing.HEADER_CERT, "")[:64]

        def fail(status: int, code: str, message: str) -> web.Response:
            payload = error_body(code, message)
            headers = {"Content-Type": "application/json"}
            if len(nonce) == 32:
                headers.update(
                    service.identity.sign_headers(signing.RESPONSE_METHOD, request.path, caller_fp, payload, nonce)
                )
            return web.Response(status=status, body=payload, headers=headers)

        try:
            try:
                body = await read_bounded(request, MAX_REQUEST)
            except BodyTooLarge:
                raise RpcError(413, "BodyTooLarge", f"the request is limited to {MAX_REQUEST} bytes") from None
            peer = signing.verify_request(
                service.trust, service.rpc.replay, service.identity.id, request.method, request.path,
                request.headers, body,
            )  # fmt: skip
            if peer.role not in DECRYPTED_IMAGE_ROLES:
                raise AuthError(403, "RoleNotAllowed", f"role {peer.role!r} may not call GetDecryptedImage")
            try:
                message = GetDecryptedImageRequest.model_validate_json(body or b"{}")
            except ValidationError as err:
                raise RpcError(400, "InvalidRequest", str(err.errors()[:3])) from None

            async def producer(temp: Path, flight: Any, reserve: Any) -> Any:
                return await self._validator().producer([], temp, flight, reserve)

            try:
                entry = await self.cache.get(message.bucket, message.manifest_key, producer)
            except BundleError as err:
                raise RpcError(err.status, err.code, err.message) from None
            assert entry is not None
            start, end = _range(message, request.headers.get("Range"), entry.size)
        except AuthError as err:
            log.warning("refused GetDecryptedImage from %s: %s (%s)", request.remote, err.code, err.message)
            return fail(err.status, err.code, err.message)
        except RpcError as err:
            return fail(err.status, err.code, err.message)
        path = self.cache.path(entry)
        try:
            handle = await asyncio.to_thread(path.open, "rb")  # evicted after this: still readable (unlinked)
        except FileNotFoundError:  # removed behind our back: forget it, the next request makes it again
            self.cache.flush(entry.bucket, entry.manifest_key)
            return fail(409, "ImageChanged", "the cached image was dropped; ask again")
        try:
            partial = (start, end) != (0, entry.size)
            status = 206 if partial else 200
            headers = {
                "Content-Type": "application/octet-stream",
                "Accept-Ranges": "bytes",
                HEADER_IMAGE_RANGE: f"{start}-{end}/{entry.size}",
                HEADER_IMAGE_SHA256: entry.image_sha256,
            }
            if partial:
                if end > start:
                    headers["Content-Range"] = f"bytes {start}-{end - 1}/{entry.size}"
            descriptor = image_descriptor(status, start, end, entry.size, entry.image_sha256)
            headers.update(
                service.identity.sign_headers(signing.RESPONSE_METHOD, request.path, caller_fp, descriptor, nonce)
            )
            response = web.StreamResponse(status=status, headers=headers)
            response.content_length = end - start
            await response.prepare(request)
            if end > start:
                await send_range(request, response, handle, start, end)
            await response.write_eof()
            return response
        finally:
            handle.close()


def _range(message: GetDecryptedImageRequest, header: str | None, total: int) -> tuple[int, int]:
    start, end = message.start, message.end
    if start is None and end is None and header:
        match = _RANGE.fullmatch(header.strip())
        if not match or match.group(0) == "bytes=-":
            raise RpcError(416, "InvalidRange", f"unsupported Range {header[:60]!r}; use bytes=N-M")
        first, last = match.groups()
        if first:
            start, end = int(first), (int(last) + 1 if last else None)
        else:
            start, end = max(total - int(last), 0), None  # suffix range: the last N bytes
    start = start or 0
    end = total if end is None else min(end, total)
    if start > total or (start == total and total > 0) or end < start:
        raise RpcError(416, "InvalidRange", f"range {start}-{end} is outside the image's {total} bytes")
    return start, end


def _describe(bundle: ValidBundle) -> ValidateImageResponse:
    m = bundle.manifest
    return ValidateImageResponse(
        bucket=bundle.bucket,
        manifest_key=bundle.manifest_key,
        manifest_sha256=bundle.sha256,
        image_name=m.name,
        kind=m.image_kind,
        architecture=m.architecture,
        kernel_id=m.kernel_id,
        ramdisk_id=m.ramdisk_id,
        block_device_mappings=m.block_device_mappings,
        size=m.size,
        bundled_size=m.bundled_size,
        parts=len(m.parts),
        owner_account_id=bundle.owner_account_id,
        signer=bundle.signer,
        signer_account_id=bundle.signer_account_id,
    )
