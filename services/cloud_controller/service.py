"""The Cloud Controller: the EC2 Query API, identity, images, admission control, instance metadata."""

from __future__ import annotations

from common.service import Service
from services.cloud_controller.config import CloudControllerConfig


class CloudControllerService(Service):
    role = "clc"
    config_class = CloudControllerConfig
    config: CloudControllerConfig

    def peer_list(self) -> list[tuple[str, str]]:
        peers = [(self.config.KOALA_WALRUS_URL, "walrus")]
        peers += [(url, "cc") for url in self.config.clusters().values()]
        return peers
