"""Cloud Controller settings."""

from __future__ import annotations

import ipaddress
import socket
from typing import Literal

from pydantic import Field, field_validator

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
    KOALA_DATABASE_URL: str = Field(
        "",
        pattern=r"^((postgresql|postgres)://\S+)?$",
        description="The CLC's state in PostgreSQL (postgresql://user:password@host:port/db) instead of SQLite in "
        "KOALA_STATE_DIR. Several CLCs on one PostgreSQL: one is active, the others stand by (answering 503 with "
        "Retry-After) and take over within seconds when it dies or loses the database.",
    )
    KOALA_METADATA_BIND: str = Field(
        "",
        description="More addresses the CLC listens on, space-separated, on the same port: where the CC's metadata "
        "redirect (VNET_CLOUDIP) sends guests when KOALA_BIND is loopback (the all-in-one's cloud link).",
    )
    KOALA_METADATA_FD: int = Field(
        -1,
        ge=-1,
        description="A listening socket the CLC inherits, by descriptor number, and serves as it serves its port: "
        "`koala up` binds it inside the cloud's router namespace (the metadata redirect's target), so guests reach "
        "the CLC with no route on the host. Given in the environment by whoever passes the socket; -1: none.",
    )

    # --- compute (images, instances, admission, addresses) ---
    KOALA_DEFAULT_KERNEL: str = Field("", description="Kernel image (eki-...) for machine images that name none.")
    KOALA_DEFAULT_RAMDISK: str = Field("", description="Ramdisk image (eri-...) for machine images that name none.")
    KOALA_QUOTA_INSTANCES: int = Field(0, ge=0, description="Live instances per account (0: unlimited).")
    KOALA_QUOTA_CORES: int = Field(0, ge=0, description="Cores of live instances per account (0: unlimited).")
    KOALA_QUOTA_ADDRESSES: int = Field(0, ge=0, description="Elastic addresses per account (0: unlimited).")
    KOALA_QUOTA_VOLUME_GB: int = Field(0, ge=0, description="GiB of EBS volumes per account (0: unlimited).")
    KOALA_QUOTA_VOLUMES: int = Field(0, ge=0, description="EBS volumes per account (0: unlimited).")
    KOALA_QUOTA_SNAPSHOTS: int = Field(0, ge=0, description="EBS snapshots per account (0: unlimited).")
    KOALA_EBS_POLL_SECONDS: float = Field(
        5.0, gt=0, description="How often the zones' storage is compared with the volume records when idle."
    )
    KOALA_PUBLIC_IPS: str = Field(
        "",
        description="Public address pool (singles, a-b ranges, CIDR), used until the CCs report theirs "
        "with DescribePublicAddresses.",
    )
    KOALA_AUTO_PUBLIC_IP: bool = Field(True, description="Give each new instance a free public address, if any.")
    KOALA_NETWORK_RESOURCES: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Allocate a VLAN per <account>-<group> network and a network index per instance, and push "
        "group rules to the CC: 'auto' where the zone's CC runs a MANAGED mode (from its DescribeNetworks).",
    )
    KOALA_ADDRS_PER_NET: int = Field(32, ge=8, le=65536, description="Addresses per network (VNET_ADDRSPERNET).")
    KOALA_RESERVATION_TIMEOUT: float = Field(
        120.0, gt=0, description="Seconds before a capacity reservation the CC never confirms expires."
    )
    KOALA_INSTANCE_LOST_SECONDS: float = Field(
        600.0, gt=0, description="Seconds a CC may stop reporting an instance before it is marked terminated."
    )
    KOALA_TERMINATED_VISIBLE_SECONDS: float = Field(
        3600.0, ge=0, description="Seconds a terminated instance stays visible in DescribeInstances."
    )
    KOALA_BURST_ACCOUNTS: str = Field(
        "",
        description="Accounts (ids, or *) whose launches may burst into a remote zone when no local zone has room.",
    )
    KOALA_BURST_VMTYPES: str = Field(
        "",
        description="VM types (names, or *) whose launches may burst into a remote zone when no local zone has room.",
    )
    KOALA_CC_POLL_SECONDS: float = Field(
        10.0, gt=0, description="How often each CC is polled (resources, instances): the safety net for pushes."
    )
    KOALA_SPOT_NOTICE_SECONDS: float = Field(
        120.0, ge=0, le=3600, description="How long before a preemption a spot instance's metadata gives notice."
    )
    KOALA_LEASE_TICK_SECONDS: float = Field(
        1.0, gt=0, le=60, description="How often the lease scheduler starts, ends, preempts and fulfils leases."
    )

    @field_validator("KOALA_METADATA_BIND")
    @classmethod
    def _addresses(cls, value: str) -> str:
        for item in value.split():
            try:
                ipaddress.ip_address(item)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address") from None
        return value

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
