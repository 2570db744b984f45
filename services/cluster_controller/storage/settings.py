"""The CC's block-storage settings (a mixin of the CC's configuration, like network/settings.py)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from common.ceph import CephSettings

_PORTAL = re.compile(r"^[A-Za-z0-9.-]{1,253}:\d{1,5}$")


class StorageSettings(CephSettings):
    KOALA_EBS_BACKEND: str = Field(
        "iscsi",
        pattern=r"^(iscsi|rbd)$",
        description="iscsi: volumes as sparse files exported by tgtd, snapshots to Walrus (the default); rbd: "
        "volumes as Ceph RBD images opened by QEMU's rbd driver, snapshots as RBD snapshots (KOALA_CEPH_*; every "
        "node of the zone needs the same KOALA_CEPH_* settings).",
    )
    KOALA_EBS_RBD_POOL: str = Field(
        "koala-ebs", pattern=r"^[A-Za-z0-9_.-]{1,100}$", description="The Ceph pool of the zone's volumes (rbd)."
    )
    KOALA_EBS_DIR: Path | None = Field(
        None,
        description="Where volume files live (sparse files); default: the CC's state directory /volumes. On a file "
        "system with reflinks (XFS with reflink=1, btrfs) snapshots read a frozen copy and, after the first, only "
        "the chunks written since; elsewhere they read the whole volume.",
    )
    KOALA_EBS_XFS_IMAGE_GB: int = Field(
        0,
        ge=0,
        le=1 << 20,
        description="0: volume files live on KOALA_EBS_DIR's own file system. N: where that file system has no "
        "reflinks (ext4), the CC makes an XFS file system with reflinks in a sparse N GiB image file beside the "
        "directory (DIR.xfs) and mounts it on the directory through a loop device, so that snapshots after the first "
        "read only the chunks written since (`koala up` sets 100; `koala down --purge` unmounts it).",
    )
    KOALA_EBS_CAPACITY_GB: int = Field(
        0, ge=0, description="GiB the zone's volumes may take in all (0: the size of KOALA_EBS_DIR's file system)."
    )
    KOALA_EBS_PORTAL: str = Field(
        "127.0.0.1:3260",
        description="HOST:PORT of the iSCSI portal tgtd listens on and the nodes connect to (one tgtd per CC).",
    )
    KOALA_EBS_TGTD: str = Field(
        "spawn",
        description="spawn: the CC starts tgtd itself when it needs it and none answers on its control port; "
        "external: tgtd is run by the system (e.g. Debian's tgt.service).",
    )
    KOALA_EBS_TGT_CONTROL: int = Field(
        0, ge=0, le=32767, description="tgtd's control port (tgtadm -C); 0: the portal's port number modulo 32768."
    )
    KOALA_EBS_S3_URL: str = Field("", description="Walrus's S3 endpoint for snapshots (empty: no snapshots).")
    KOALA_EBS_S3_CREDENTIALS: Path | None = Field(
        None, description="A eucarc-style file with EC2_ACCESS_KEY and EC2_SECRET_KEY for the snapshot bucket."
    )
    KOALA_EBS_BUCKET: str = Field("koala-snapshots", description="The Walrus bucket snapshots are kept in.")
    KOALA_EBS_RECONCILE_SECONDS: float = Field(
        10.0, gt=0, description="How often exports, attachments and volume files are compared with the records."
    )

    @field_validator("KOALA_EBS_PORTAL")
    @classmethod
    def _portal(cls, value: str) -> str:
        if not _PORTAL.match(value) or not 0 < int(value.rsplit(":", 1)[1]) < 65536:
            raise ValueError(f"expected HOST:PORT, got {value!r}")
        return value

    @field_validator("KOALA_EBS_TGTD")
    @classmethod
    def _tgtd(cls, value: str) -> str:
        if value not in ("spawn", "external"):
            raise ValueError("spawn or external")
        return value

    @model_validator(mode="after")
    def _rbd_needs_ceph(self) -> StorageSettings:
        if self.KOALA_EBS_BACKEND == "rbd" and self.KOALA_CEPH_CONF is None:
            raise ValueError("KOALA_EBS_BACKEND=rbd needs KOALA_CEPH_CONF (the cluster's ceph.conf)")
        return self
