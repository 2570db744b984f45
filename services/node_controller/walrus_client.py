"""Fetching decrypted images from Walrus (`GetDecryptedImage`), streamed to a file.

The call is the signed internal RPC (`POST /internal/GetDecryptedImage`, JSON body, DESIGN section 3), but
the answer is the image itself, streamed: the NC hashes it while writing it to disk, then checks Walrus's
response signature over that hash, and the image's SHA-256 against `X-Koala-Image-Sha256`. When the NC
already holds the image of a manifest, it says so (`if_manifest_digest`) and Walrus answers 304 with an empty
signed body when the manifest has not changed since, which is how the cache re-checks a hit cheaply.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from pydantic import BaseModel, Field

from common import signing
from common.rpc import PeerUnreachable, RpcClient, RpcError, RpcErrorBody
from common.signing import AuthError

OPERATION = "GetDecryptedImage"
HEADER_MANIFEST_DIGEST = "X-Koala-Manifest-Digest"
HEADER_IMAGE_SHA256 = "X-Koala-Image-Sha256"
WRITE_BATCH = 1 << 20


class GetDecryptedImageRequest(BaseModel):
    image_id: str = Field(max_length=32)
    manifest: str = Field(max_length=2048)  # bucket/key of the manifest
    if_manifest_digest: str = Field("", max_length=128)  # answer 304 when the manifest still has this digest


@dataclass(frozen=True)
class Fetched:
    not_modified: bool
    manifest_digest: str
    sha256: str = ""
    size: int = 0


class ImageFetchError(Exception):
    """The image could not be fetched; `code` names why (WalrusUnreachable, ImageNotFound, DigestMismatch...)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class WalrusImages:
    def __init__(self, client: RpcClient, url: str, timeout: float = 600.0):
        self.client, self.url, self.timeout = client, url.rstrip("/"), timeout

    async def fetch(
        self, image_id: str, manifest: str, dest: Path, if_manifest_digest: str = "", max_size: int = 0
    ) -> Fetched:
        """Download the image into `dest` (created or replaced), or learn it has not changed."""
        if not self.url:
            raise ImageFetchError("WalrusUnreachable", "no Walrus URL configured (KOALA_WALRUS_URL)")
        try:
            return await self._fetch(image_id, manifest, dest, if_manifest_digest, max_size)
        except PeerUnreachable as err:
            raise ImageFetchError("WalrusUnreachable", err.message) from None
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as err:
            raise ImageFetchError("WalrusUnreachable", f"{self.url}: {err or type(err).__name__}") from None
        except RpcError as err:
            raise ImageFetchError(err.code, err.message) from None

    async def _fetch(self, image_id: str, manifest: str, dest: Path, known: str, max_size: int) -> Fetched:
        peer = await self.client.peer(self.url, expect_role="walrus", timeout=10)
        path = f"/internal/{OPERATION}"
        body = (
            GetDecryptedImageRequest(image_id=image_id, manifest=manifest, if_manifest_digest=known)
            .model_dump_json()
            .encode()
        )
        identity = self.client.identity
        headers = identity.sign_headers("POST", path, peer.id, body)
        headers["Content-Type"] = "application/json"
        headers[signing.HEADER_CERT_PEM] = identity.cert_der_b64  # a single call: always introduce ourselves
        nonce = headers[signing.HEADER_NONCE]
        timeout = aiohttp.ClientTimeout(total=self.timeout, sock_connect=10, sock_read=60)
        async with self.client.session.post(self.url + path, data=body, headers=headers, timeout=timeout) as resp:
            if resp.status != 200:
                payload = await resp.content.read(1 << 16)
                _verify(peer, identity.fingerprint, path, nonce, resp.headers, hashlib.sha256(payload).hexdigest())
                if resp.status == 304:
                    return Fetched(True, resp.headers.get(HEADER_MANIFEST_DIGEST, known))
                try:
                    error = RpcErrorBody.model_validate_json(payload)
                except ValueError:
                    error = RpcErrorBody(code="BadResponse", message=f"HTTP {resp.status}")
                raise RpcError(resp.status, error.code, error.message)
            length = resp.content_length or 0
            if max_size and length > max_size:
                raise ImageFetchError("ImageTooLarge", f"{image_id} is {length} bytes, more than the cache holds")
            digest = hashlib.sha256()
            size = 0
            loop = asyncio.get_running_loop()
            tmp = dest.with_name(dest.name + ".part")
            handle = await loop.run_in_executor(None, _open_new, tmp)
            try:
                buffer = bytearray()
                async for chunk in resp.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if max_size and size > max_size:
                        raise ImageFetchError("ImageTooLarge", f"{image_id} is larger than the cache holds")
                    digest.update(chunk)
                    buffer += chunk
                    if len(buffer) >= WRITE_BATCH:
                        data, buffer = bytes(buffer), bytearray()
                        await loop.run_in_executor(None, handle.write, data)
                if buffer:
                    await loop.run_in_executor(None, handle.write, bytes(buffer))
                await loop.run_in_executor(None, os.fsync, handle.fileno())
            except BaseException:
                handle.close()
                tmp.unlink(missing_ok=True)
                raise
            handle.close()
            hexdigest = digest.hexdigest()
            try:
                _verify(peer, identity.fingerprint, path, nonce, resp.headers, hexdigest)
                if length and size != length:
                    raise ImageFetchError("ShortImage", f"{image_id}: got {size} of {length} bytes")
                claimed = resp.headers.get(HEADER_IMAGE_SHA256, "")
                if claimed and claimed != hexdigest:
                    raise ImageFetchError("DigestMismatch", f"{image_id}: image digest does not match Walrus's")
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            tmp.replace(dest)
            return Fetched(False, resp.headers.get(HEADER_MANIFEST_DIGEST, ""), hexdigest, size)


def _open_new(path: Path):
    return path.open("wb")


def _verify(peer: signing.PeerCert, client_fp: str, path: str, nonce: str, headers, body_sha256: str) -> None:
    """Walrus's response signature, over the body's SHA-256 computed while streaming."""
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
        raise ImageFetchError("BadResponseSignature", "Walrus's response signature does not match the image")
    if abs(time.time() - when) > signing.CLOCK_WINDOW_SECONDS:
        raise ImageFetchError("ResponseExpired", "response date outside the clock window")
