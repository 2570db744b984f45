"""Cluster Controller settings (eucalyptus.conf names where Eucalyptus had them)."""

from __future__ import annotations

from pydantic import Field, field_validator

from common.config import ServiceConfig
from services.cluster_controller.network.settings import VnetSettings
from services.cluster_controller.placement import POLICIES
from services.cluster_controller.power import WAKE_METHODS
from services.cluster_controller.remote.settings import RemoteSettings
from services.cluster_controller.storage.settings import StorageSettings


# VNET_*: network/, KOALA_REMOTE_*: remote/, KOALA_EBS_*: storage/
class ClusterControllerConfig(VnetSettings, RemoteSettings, StorageSettings, ServiceConfig):
    CC_PORT: int = Field(8774, ge=1, le=65535, description="Port of the CC's internal API.")
    NODES: str = Field("", description="Node controllers: space-separated HOST or HOST:PORT entries.")
    NC_PORT: int = Field(8775, ge=1, le=65535, description="Default port of the node controllers.")
    KOALA_ZONE: str = Field(description="This cluster's availability zone name.")
    KOALA_CLC_URL: str = Field(description="The Cloud Controller's base URL (state pushes).")
    SCHEDPOLICY: str = Field(
        "ROUNDROBIN", description=f"Placement policy: {', '.join(POLICIES)} (as Eucalyptus, plus OpenNebula's ranks)."
    )
    NC_POLLING_FREQUENCY: float = Field(
        6.0, gt=0, description="Seconds between DescribeResource/DescribeInstances polls of each node controller."
    )
    POWER_IDLETHRESH: float = Field(
        300.0, gt=0, description="POWERSAVE: seconds a node stays empty before it is powered down."
    )
    POWER_WAKETHRESH: float = Field(
        300.0, gt=0, description="POWERSAVE: seconds a woken node may take to answer before it is DOWN."
    )
    KOALA_NC_TIMEOUT: float = Field(
        5.0, gt=0, description="Timeout of each poll of a node controller (each node has its own)."
    )
    KOALA_RUN_TIMEOUT: float = Field(60.0, gt=0, description="Timeout of one RunInstance call to a node controller.")
    KOALA_RUN_RETRIES: int = Field(
        1, ge=0, le=10, description="How many other nodes an instance is tried on when a node fails its RunInstance."
    )
    KOALA_NC_CONCURRENCY: int = Field(
        8, ge=1, le=256, description="RunInstance/TerminateInstance calls in flight to one node controller at once."
    )
    KOALA_WOL_METHOD: str = Field(
        "udp", description=f"How POWERSAVE wakes nodes: {', '.join(WAKE_METHODS)} (udp: the CC sends the packet)."
    )
    KOALA_WOL_INTERFACE: str = Field("", description="Interface for etherwake (KOALA_WOL_METHOD=etherwake).")
    KOALA_WOL_BROADCAST: str = Field("255.255.255.255", description="Broadcast address for Wake-on-LAN packets.")
    KOALA_CONSOLIDATE: bool = Field(
        True, description="POWERSAVE: pack instances onto fewer nodes by live migration so that nodes can sleep."
    )
    KOALA_CONSOLIDATE_AFTER: float = Field(
        120.0, ge=0, description="Consolidation's hysteresis: seconds a node must look emptiable before it is emptied."
    )
    KOALA_CONSOLIDATE_COOLDOWN: float = Field(
        900.0, ge=0, description="Seconds after a consolidation move before the same instance may be moved again."
    )
    KOALA_CONSOLIDATE_MAX_MIGRATIONS: int = Field(
        2, ge=1, le=64, description="Most live migrations in flight in the zone for consolidation to start more."
    )
    KOALA_CONSOLIDATE_RESERVE: float = Field(
        0.1, ge=0, lt=1, description="Share of a node's memory consolidation keeps free (and below which it is short)."
    )
    KOALA_TEARDOWN_RETENTION: float = Field(
        600.0, gt=0, description="Seconds a terminated or failed instance is still reported before it is forgotten."
    )

    @field_validator("SCHEDPOLICY")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        if value.upper() not in POLICIES:
            raise ValueError(f"unknown policy {value!r}; one of {', '.join(POLICIES)}")
        return value.upper()

    @field_validator("KOALA_WOL_METHOD")
    @classmethod
    def _known_wake(cls, value: str) -> str:
        if value not in WAKE_METHODS:
            raise ValueError(f"unknown wake method {value!r}; one of {', '.join(WAKE_METHODS)}")
        return value

    @property
    def port(self) -> int:
        return self.CC_PORT

    def node_urls(self) -> list[str]:
        return [node_url(entry, self.NC_PORT) for entry in self.NODES.split()]


def node_url(entry: str, default_port: int) -> str:
    """`HOST`, `HOST:PORT` or `http://HOST:PORT` -> the node controller's base URL."""
    entry = entry.strip().rstrip("/")
    if entry.startswith(("http://", "https://")):
        return entry
    host, _, port = entry.partition(":")
    return f"http://{host}:{port or default_port}"
