"""Cloud Controller settings."""

from __future__ import annotations

import socket

from pydantic import Field

from common.config import ServiceConfig


class CloudControllerConfig(ServiceConfig):
    KOALA_CLC_PORT: int = Field(8773, ge=1, le=65535, description="Port of the EC2 API and internal calls.")
    KOALA_WALRUS_URL: str = Field(description="Walrus's base URL, e.g. http://127.0.0.1:8776.")
    KOALA_CLUSTERS: str = Field(
        "", description="Clusters as space-separated ZONE=URL pairs, e.g. 'zone1=http://10.0.0.2:8774'."
    )
    KOALA_REGION: str = Field(
        "eucalyptus", pattern=r"^[a-z0-9-]{1,32}$", description="The region name DescribeRegions answers."
    )
    KOALA_CLC_PUBLIC_URL: str = Field(
        "",
        description="The CLC's base URL as users reach it, for eucarc files and DescribeRegions "
        "(default http://KOALA_BIND:KOALA_CLC_PORT, the host name if bound to all addresses).",
    )

    @property
    def port(self) -> int:
        return self.KOALA_CLC_PORT

    def public_url(self) -> str:
        if self.KOALA_CLC_PUBLIC_URL:
            return self.KOALA_CLC_PUBLIC_URL.rstrip("/")
        host = self.KOALA_BIND if self.KOALA_BIND not in ("0.0.0.0", "::", "") else socket.getfqdn()
        return f"http://{host}:{self.KOALA_CLC_PORT}"

    def ec2_url(self) -> str:
        return self.public_url() + "/services/Eucalyptus"

    def s3_url(self) -> str:
        return self.KOALA_WALRUS_URL.rstrip("/") + "/services/Walrus"

    def clusters(self) -> dict[str, str]:
        pairs = {}
        for item in self.KOALA_CLUSTERS.split():
            zone, _, url = item.partition("=")
            pairs[zone] = url
        return pairs
