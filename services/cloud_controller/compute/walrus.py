"""Walrus's image operations as the image registry uses them (common/messages/walrus_images.py, role clc)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import BaseModel

from common.messages.walrus_images import (
    CacheImageRequest,
    CacheImageResponse,
    FlushImageRequest,
    FlushImageResponse,
    ValidateImageRequest,
    ValidateImageResponse,
)
from common.rpc import PeerUnreachable, RpcClient, RpcError
from services.cloud_controller.compute.errors import ComputeError
from services.cloud_controller.compute.images import ManifestFacts, split_location

# Walrus's reasons -> EC2 error codes users see (anything else about the manifest is InvalidManifest).
_CODES = {
    "NoSuchBucket": ("InvalidManifest", 400),
    "NoSuchKey": ("InvalidManifest", 400),
    "SignatureMismatch": ("AuthFailure", 403),
    "SignerNotBucketOwner": ("AuthFailure", 403),
    "SignerInactive": ("AuthFailure", 403),
    "UnsignedManifest": ("AuthFailure", 403),
    "AccessDenied": ("AuthFailure", 403),
}

T = TypeVar("T", bound=BaseModel)
CertificatesFor = Callable[[str], Awaitable[list[str]]]


class WalrusImages:
    def __init__(self, client: RpcClient, url: str, certificates_for: CertificatesFor | None = None):
        self.client, self.url, self.certificates_for = client, url, certificates_for

    async def _call(self, op: str, message: BaseModel | None, response: type[T], timeout: float = 60.0) -> T:
        try:
            return await self.client.call(self.url, op, message, response, expect_role="walrus", timeout=timeout)
        except PeerUnreachable as err:
            raise ComputeError("Unavailable", f"Walrus is unreachable: {err.message}", 503) from None
        except RpcError as err:
            code, status = _CODES.get(err.code, ("InvalidManifest", 400))
            if err.status >= 500 and err.code not in _CODES:
                code, status = "Unavailable", 503
            raise ComputeError(code, f"{err.code}: {err.message}", status) from None

    async def validate(self, location: str, account_id: str) -> ManifestFacts:
        bucket, key = split_location(location)
        certificates = await self.certificates_for(account_id) if self.certificates_for else []
        answer: ValidateImageResponse = await self._call(
            "ValidateImage",
            ValidateImageRequest(bucket=bucket, manifest_key=key, certificates=certificates[:64]),
            ValidateImageResponse,
        )
        kernel, ramdisk = answer.kernel_id or "", answer.ramdisk_id or ""
        # Walrus reads the manifest; the type rule itself lives in images.image_kind, fed what Walrus found.
        if answer.kind == "kernel" and kernel.lower() != "true":
            kernel = "true"
        if answer.kind == "ramdisk" and ramdisk.lower() != "true":
            ramdisk = "true"
        return ManifestFacts(
            bucket_owner_id=answer.owner_account_id,
            image_name=answer.image_name,
            architecture=answer.architecture,
            kernel_id=kernel,
            ramdisk_id=ramdisk,
            size=answer.size,
        )

    async def cache(self, location: str) -> None:
        bucket, key = split_location(location)
        await self._call(
            "CacheImage", CacheImageRequest(bucket=bucket, manifest_key=key, wait=False), CacheImageResponse
        )

    async def flush(self, location: str) -> None:
        bucket, key = split_location(location)
        await self._call("FlushImage", FlushImageRequest(bucket=bucket, manifest_key=key), FlushImageResponse)
