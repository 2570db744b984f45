"""Cluster Controller settings (eucalyptus.conf names where Eucalyptus had them)."""

from __future__ import annotations

from pydantic import Field

from common.config import ServiceConfig


class ClusterControllerConfig(ServiceConfig):
    CC_PORT: int = Field(8774, ge=1, le=65535, description="Port of the CC's internal API.")
    NODES: str = Field("", description="Node controllers: space-separated HOST or HOST:PORT entries.")
    NC_PORT: int = Field(8775, ge=1, le=65535, description="Default port of the node controllers.")
    KOALA_ZONE: str = Field(description="This cluster's availability zone name.")
    KOALA_CLC_URL: str = Field(description="The Cloud Controller's base URL (state pushes).")

    @property
    def port(self) -> int:
        return self.CC_PORT

    def node_urls(self) -> list[str]:
        urls = []
        for entry in self.NODES.split():
            host, _, port = entry.partition(":")
            urls.append(f"http://{host}:{port or self.NC_PORT}")
        return urls
