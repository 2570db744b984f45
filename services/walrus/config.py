"""Walrus settings."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from common.ceph import CephSettings
from common.config import ServiceConfig


class WalrusConfig(CephSettings, ServiceConfig):
    KOALA_WALRUS_PORT: int = Field(8776, ge=1, le=65535, description="Port of the S3 API and internal calls.")
    KOALA_CLC_URL: str = Field(description="The Cloud Controller's base URL (identity lookups).")
    KOALA_WALRUS_DOMAINS: str = Field(
        "localhost",
        description="Comma-separated host names whose sub-domains name buckets (virtual-host style requests: "
        "`bucket.<domain>`). Requests to an IP address or another host are path style.",
    )
    KOALA_WALRUS_MAX_OBJECT_SIZE: int = Field(5 << 30, gt=0, description="Largest single PUT (and part), bytes.")
    KOALA_WALRUS_MIN_PART_SIZE: int = Field(
        5 << 20, ge=0, description="Smallest multipart part but the last, bytes (S3: 5 MiB)."
    )
    KOALA_WALRUS_BUCKET_QUOTA: int = Field(0, ge=0, description="Bytes one bucket may hold; 0 for no limit.")
    KOALA_WALRUS_ACCOUNT_QUOTA: int = Field(0, ge=0, description="Bytes one account may hold; 0 for no limit.")
    KOALA_WALRUS_MAX_BUCKETS: int = Field(100, gt=0, description="Buckets one account may own.")
    KOALA_WALRUS_KEY_CACHE_SECONDS: float = Field(
        10.0, ge=0, description="How long an access key resolved through the CLC is cached (revocation delay)."
    )
    KOALA_WALRUS_CREDENTIALS_FILE: Path | None = Field(
        None,
        description="Optional JSON file of access keys (key -> secret_access_key + principal), read before asking "
        "the CLC. For tests and bring-up only.",
    )
    KOALA_WALRUS_LOG_FLUSH_SECONDS: float = Field(
        60.0, gt=0, description="How often bucket access logs (PutBucketLogging) are written to their target bucket."
    )
    KOALA_WALRUS_STORAGE: str = Field(
        "local",
        pattern=r"^(local|rados)$",
        description="Where object data lives: local (files under KOALA_STATE_DIR) or rados (a Ceph pool, reached "
        "with KOALA_CEPH_CONF / KOALA_CEPH_USER / KOALA_CEPH_KEYRING). Metadata stays in the service's database.",
    )
    KOALA_WALRUS_RADOS_POOL: str = Field(
        "koala-walrus", pattern=r"^[A-Za-z0-9_.-]{1,100}$", description="The Ceph pool of object data (rados)."
    )
    KOALA_WALRUS_RADOS_NAMESPACE: str = Field(
        "",
        pattern=r"^[A-Za-z0-9_.-]{0,100}$",
        description="The namespace in that pool, one per Walrus database (default: KOALA_SERVICE_ID).",
    )
    KOALA_WALRUS_DATABASE_URL: str = Field(
        "",
        pattern=r"^(|postgres(ql)?://.+)$",
        description="Metadata in this PostgreSQL database (postgresql://...) instead of the local SQLite file, so "
        "that several Walrus front ends serve one object store: needs KOALA_WALRUS_STORAGE=rados and the same "
        "KOALA_WALRUS_RADOS_NAMESPACE on every front end. Give Walrus a database of its own (not the CLC's).",
    )
    KOALA_WALRUS_SHARED_REMOVAL_DELAY: float = Field(
        300.0,
        ge=0,
        description="With shared metadata: seconds between an object's data losing its last version and its "
        "removal, the time a read under way on another front end has to finish.",
    )
    KOALA_WALRUS_FSYNC: bool = Field(
        True,
        description="Sync a write to the disk (data files, their directory, the metadata log) before acknowledging "
        "it, so that it survives a power cut. false: acknowledged once handed to the kernel, which survives a crash "
        "or kill -9 of Walrus but not of the machine (what rclone serve s3 and SeaweedFS do by default).",
    )
    KOALA_WALRUS_IMAGE_CACHE_MB: int = Field(
        20480, ge=1, description="Size cap of the decrypted-image cache in MiB (least recently used images go first)."
    )
    KOALA_WALRUS_IMAGE_CACHE_DIR: str = Field(
        "", description="Directory of the decrypted-image cache (default: <KOALA_STATE_DIR>/image-cache)."
    )

    KOALA_WALRUS_LIFECYCLE_INTERVAL: float = Field(
        3600.0, gt=0, description="Seconds between two lifecycle sweeps (expirations and aborted uploads)."
    )
    KOALA_WALRUS_LIFECYCLE_DAY: float = Field(
        86400.0, gt=0, description="Seconds in a lifecycle rule's day. Only tests shorten it."
    )

    @model_validator(mode="after")
    def _rados_needs_ceph(self) -> WalrusConfig:
        if self.KOALA_WALRUS_STORAGE == "rados" and self.KOALA_CEPH_CONF is None:
            raise ValueError("KOALA_WALRUS_STORAGE=rados needs KOALA_CEPH_CONF (the cluster's ceph.conf)")
        if self.KOALA_WALRUS_DATABASE_URL and (
            self.KOALA_WALRUS_STORAGE != "rados" or not self.KOALA_WALRUS_RADOS_NAMESPACE
        ):
            raise ValueError(
                "KOALA_WALRUS_DATABASE_URL (shared metadata) needs KOALA_WALRUS_STORAGE=rados and an explicit "
                "KOALA_WALRUS_RADOS_NAMESPACE, the same on every front end"
            )
        return self

    @property
    def port(self) -> int:
        return self.KOALA_WALRUS_PORT
