"""The Cluster Controller: node registry and health, placement, fan-out, the cluster's network."""

from __future__ import annotations

from common.service import Service
from services.cluster_controller.config import ClusterControllerConfig


class ClusterControllerService(Service):
    role = "cc"
    config_class = ClusterControllerConfig
    config: ClusterControllerConfig

    def peer_list(self) -> list[tuple[str, str]]:
        return [(url, "nc") for url in self.config.node_urls()]
