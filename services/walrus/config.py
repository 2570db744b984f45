"""Walrus settings."""

from __future__ import annotations

from pydantic import Field

from common.config import ServiceConfig


class WalrusConfig(ServiceConfig):
    KOALA_WALRUS_PORT: int = Field(8776, ge=1, le=65535, description="Port of the S3 API and internal calls.")
    KOALA_CLC_URL: str = Field(description="The Cloud Controller's base URL (identity lookups).")
    KOALA_WALRUS_IMAGE_CACHE_MB: int = Field(
        20480, ge=1, description="Size cap of the decrypted-image cache in MiB (least recently used images go first)."
    )
    KOALA_WALRUS_IMAGE_CACHE_DIR: str = Field(
        "", description="Directory of the decrypted-image cache (default: <KOALA_STATE_DIR>/image-cache)."
    )

    @property
    def port(self) -> int:
        return self.KOALA_WALRUS_PORT
