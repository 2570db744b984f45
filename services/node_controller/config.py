"""Node Controller settings (eucalyptus.conf names where Eucalyptus had them)."""

from __future__ import annotations

from pydantic import Field

from common.config import ServiceConfig


class NodeControllerConfig(ServiceConfig):
    NC_PORT: int = Field(8775, ge=1, le=65535, description="Port of the NC's internal API.")
    KOALA_CC_URL: str = Field("", description="The Cluster Controller's base URL (state pushes).")

    @property
    def port(self) -> int:
        return self.NC_PORT
