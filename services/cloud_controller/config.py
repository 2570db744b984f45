"""Cloud Controller settings."""

from __future__ import annotations

from pydantic import Field

from common.config import ServiceConfig


class CloudControllerConfig(ServiceConfig):
    KOALA_CLC_PORT: int = Field(8773, ge=1, le=65535, description="Port of the EC2 API and internal calls.")
    KOALA_WALRUS_URL: str = Field(description="Walrus's base URL, e.g. http://127.0.0.1:8776.")
    KOALA_CLUSTERS: str = Field(
        "", description="Clusters as space-separated ZONE=URL pairs, e.g. 'zone1=http://10.0.0.2:8774'."
    )

    @property
    def port(self) -> int:
        return self.KOALA_CLC_PORT

    def clusters(self) -> dict[str, str]:
        pairs = {}
        for item in self.KOALA_CLUSTERS.split():
            zone, _, url = item.partition("=")
            pairs[zone] = url
        return pairs
