"""Walrus: the S3-compatible object store and bundled-image cache."""

from __future__ import annotations

from common.service import Service
from services.walrus.config import WalrusConfig


class WalrusService(Service):
    role = "walrus"
    config_class = WalrusConfig
    config: WalrusConfig

    def peer_list(self) -> list[tuple[str, str]]:
        return [(self.config.KOALA_CLC_URL, "clc")]
