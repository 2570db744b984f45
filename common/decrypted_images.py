"""Fetching decrypted images from Walrus with `GetDecryptedImage` (common/messages/walrus_images.py).

The request is a signed JSON `GetDecryptedImageRequest` (bucket, manifest key, optional byte range) posted to
`/internal/stream/GetDecryptedImage`; the answer is the image itself, streamed. Walrus signs a descriptor of the
bytes it sends (status, range, total size and the whole image's SHA-256) in the response headers, so the caller
checks the signature before reading the body and the SHA-256 after writing it to disk. Callers: the NC (its image
cache) and a remote zone's CC (re-bundling a local image for the remote cloud).

Re-checking a cached image is the same call for zero bytes (`start=0, end=0`): the signed headers tell the
image's current SHA-256, so a re-bundled image under the same manifest is noticed without a download.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from common import signing
from common.messages.walrus_images import (
    GET_DECRYPTED_IMAGE_PATH,
    HEADER_IMAGE_RANGE,
    HEADER_IMAGE_SHA256,
    GetDecryptedImageRequest,
    image_descriptor,
)
from common.rpc import PeerUnreachable, RpcClient, RpcError, RpcErrorBody
from common.signing import AuthError

WRITE_BATCH = 1 << 20
_RANGE = re.compile(r"^(\d+)-(\d+)/(\d+)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Fetched:
    sha256: str  # of the whole image
    size: int  # of the whole image


class ImageFetchError(Exception):
    """The image could not be fetched; `code` names why (WalrusUnreachable, NoSuchKey, ImageDigestMismatch...)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def split_manifest(manifest: str) -> tuple[str, str]:
    """ "bucket/dir/x.manifest.xml" -> ("bucket", "dir/x.manifest.xml")."""
    bucket, _, key = manifest.lstrip("/").partition("/")
    if not bucket or not key:
        raise ImageFetchError("InvalidManifestLocation", f"{manifest!r} is not bucket/key")
    return bucket, key


class WalrusImages:
    def __init__(self, client: RpcClient, url: str, timeout: float = 900.0):
        self.client, self.url, self.timeout = client, url.rstrip("/"), timeout

    async def describe(self, manifest: str) -> Fetched:
        """The image's current SHA-256 and size, without downloading it."""
        return await self._guard(self._request(manifest, None, 0, 0))

    async def fetch(self, manifest: str, dest: Path, max_size: int = 0) -> Fetched:
        """Download the whole image into `dest` (replaced atomically); its SHA-256 is checked."""
        return await self._guard(self._request(manifest, dest, None, None, max_size))

    async def _guard(self, coro: Coroutine[Any, Any, Fetched]) -> Fetched:
        if not self.url:
            coro.close()
            raise ImageFetchError("WalrusUnreachable", "no Walrus URL configured (KOALA_WALRUS_URL)")
        try:
            return await coro
        except PeerUnreachable as err:
            raise ImageFetchError("WalrusUnreachable", err.message) from None
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as err:
            raise ImageFetchError("WalrusUnreachable", f"{self.url}: {err or type(err).__name__}") from None
        except RpcError as err:
            raise ImageFetchError(err.code, err.message) from None

    async def _request(
        self, manifest: str, dest: Path | None, start: int | None, end: int | None, max_size: int = 0
    ) -> Fetched:
        bucket, key = split_manifest(manifest)
        peer = await self.client.peer(self.url, expect_role="walrus", timeout=10)
        path = GET_DECRYPTED_IMAGE_PATH
        body = GetDecryptedImageRequest(bucket=bucket, manifest_key=key, start=start, end=end).model_dump_json()
        identity = self.client.identity
        headers = identity.sign_headers("POST", path, peer.id, body.encode())
        headers["Content-Type"] = "application/json"
        headers[signing.HEADER_CERT_PEM] = identity.cert_der_b64  # one call per download: always introduce us
        nonce = headers[signing.HEADER_NONCE]
        timeout = aiohttp.ClientTimeout(total=self.timeout, sock_connect=10, sock_read=120)
        async with self.client.session.post(self.url + path, data=body, headers=headers, timeout=timeout) as resp:
            if resp.status not in (200, 206):
                payload = await resp.content.read(1 << 16)
                _verify(peer, identity.fingerprint, path, nonce, resp.headers, hashlib.sha256(payload).hexdigest())
                try:
                    error = RpcErrorBody.model_validate_json(payload)
                except ValueError:
                    error = RpcErrorBody(code="BadResponse", message=f"HTTP {resp.status}")
                raise RpcError(resp.status, error.code, error.message)
            got = _RANGE.match(resp.headers.get(HEADER_IMAGE_RANGE, ""))
            sha = resp.headers.get(HEADER_IMAGE_SHA256, "")
            if got is None or not _SHA256.match(sha):
                raise ImageFetchError("BadResponse", "Walrus's answer lacks the image range or digest")
            first, last, total = (int(g) for g in got.groups())
            descriptor = image_descriptor(resp.status, first, last, total, sha)
            _verify(peer, identity.fingerprint, path, nonce, resp.headers, hashlib.sha256(descriptor).hexdigest())
            if dest is None:
                return Fetched(sha, total)
            if (first, last) != (0, total):
                raise ImageFetchError("BadResponse", f"asked for the whole image, got {first}-{last}/{total}")
            if max_size and total > max_size:
                raise ImageFetchError("ImageTooLarge", f"the image is {total} bytes, more than the cache's {max_size}")
            await _stream_to(resp, dest, total, sha)
            return Fetched(sha, total)


async def _stream_to(resp: aiohttp.ClientResponse, dest: Path, total: int, sha256: str) -> None:
    """Write the body to dest (via dest.part, fsynced, renamed if its SHA-256 is `sha256`). Writes in a thread."""
    loop = asyncio.get_running_loop()
    tmp = dest.with_name(dest.name + ".part")
    handle = await loop.run_in_executor(None, tmp.open, "wb")
    digest, size = hashlib.sha256(), 0
    try:
        buffer = bytearray()
        async for chunk in resp.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > total:
                raise ImageFetchError("ImageSizeMismatch", "Walrus sent more bytes than it announced")
            digest.update(chunk)
            buffer += chunk
            if len(buffer) >= WRITE_BATCH:
                data, buffer = bytes(buffer), bytearray()
                await loop.run_in_executor(None, handle.write, data)
        if buffer:
            await loop.run_in_executor(None, handle.write, bytes(buffer))
        await loop.run_in_executor(None, os.fsync, handle.fileno())
        if size != total:
            raise ImageFetchError("ImageSizeMismatch", f"got {size} of {total} bytes")
        if digest.hexdigest() != sha256:
            raise ImageFetchError("ImageDigestMismatch", "the image received does not match Walrus's digest")
    except BaseException:
        handle.close()
        tmp.unlink(missing_ok=True)
        raise
    handle.close()
    tmp.replace(dest)


def _verify(
    peer: signing.PeerCert, client_fp: str, path: str, nonce: str, headers: Mapping[str, str], body_sha256: str
) -> None:
    """Walrus's response signature, whose canonical string carries `body_sha256` (the body's or descriptor's)."""
    get = headers.get
    fp, date, signature = get(signing.HEADER_CERT), get(signing.HEADER_DATE), get(signing.HEADER_SIGNATURE)
    if not (fp and date and signature) or fp != peer.fingerprint:
        raise ImageFetchError("UnsignedResponse", "Walrus's answer is not signed by Walrus")
    try:
        raw = base64.b64decode(signature, validate=True)
        when = signing.parse_date(date)
    except (ValueError, AuthError):
        raise ImageFetchError("BadResponseSignature", "malformed response signature") from None
    data = "\n".join((signing.RESPONSE_METHOD, path, client_fp, date, nonce, body_sha256)).encode()
    if not signing.verify_bytes(peer.cert, raw, data):
        raise ImageFetchError("BadResponseSignature", "Walrus's response signature does not match")
    if abs(time.time() - when) > signing.CLOCK_WINDOW_SECONDS:
        raise ImageFetchError("ResponseExpired", "response date outside the clock window")
