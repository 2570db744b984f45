"""The CLC's cluster registry (role admin): which Cluster Controller serves which zone.

Clusters come from the CLC's KOALA_CLUSTERS setting and from RegisterCluster; DescribeClusters lists both.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

ZONE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class RegisterClusterRequest(BaseModel):
    zone: str = Field(pattern=ZONE_PATTERN)
    url: str = Field(min_length=1, max_length=300)  # http://HOST:PORT of the CC
    # Register even when the CC does not answer yet (its certificate is then checked by the peer monitor).
    force: bool = False


class DeregisterClusterRequest(BaseModel):
    zone: str = Field(pattern=ZONE_PATTERN)


class ClusterInfo(BaseModel):
    zone: str
    url: str
    source: Literal["config", "registered"]
    cc_id: str = ""  # the CC's service id, once it has answered
    reachable: bool = False
    last_error: str | None = None


class DescribeClustersResponse(BaseModel):
    clusters: list[ClusterInfo]
