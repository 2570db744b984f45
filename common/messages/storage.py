"""Elastic Block Store between the services, as pydantic models.

CLC -> CC (role clc): volumes, attachments and snapshots of the CC's zone (the CC's storage package,
services/cluster_controller/storage/). CC -> NC (role cc): plug a volume's iSCSI export into a domain, unplug it.
Every operation is idempotent by the resource id, so a caller that crashed or timed out simply sends it again.
Sizes are in GiB (`size_gb`) throughout.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

MAX_VOLUME_GB = 1024  # EC2's limit for the `standard` volume type
MAX_IDS = 1000

StorageVolumeState = Literal["creating", "available", "deleting", "error", "gone"]
AttachState = Literal["attaching", "attached", "detaching", "detached", "error"]
SnapshotState = Literal["pending", "completed", "error", "deleting", "gone"]


# --- CLC -> CC ------------------------------------------------------------------------------------------
class CreateVolumeRequest(BaseModel):
    volume_id: str = Field(max_length=20)
    size_gb: int = Field(ge=1, le=MAX_VOLUME_GB)
    snapshot_id: str = Field("", max_length=20)  # restore this snapshot's blocks into the new volume


class StorageChanged(BaseModel):
    """CC -> CLC (role cc): a volume or snapshot of the zone settled (made, failed, completed): reconcile now rather
    than at the next poll."""

    zone: str = Field(max_length=64)


class VolumeIdRequest(BaseModel):
    volume_id: str = Field(max_length=20)


class DescribeStorageRequest(BaseModel):
    volume_ids: list[str] = Field(default=[], max_length=MAX_IDS)  # empty: all
    snapshot_ids: list[str] = Field(default=[], max_length=MAX_IDS)  # empty: all


class StorageVolume(BaseModel):
    volume_id: str
    state: StorageVolumeState
    size_gb: int = 0
    snapshot_id: str = ""
    detail: str = ""  # why it is in error, or what it is doing
    attachment: StorageAttachment | None = None


class StorageAttachment(BaseModel):
    instance_id: str
    device: str
    state: AttachState
    node: str = ""  # the node's service id
    detail: str = ""


class DescribeStorageResponse(BaseModel):
    zone: str
    capacity_gb: int  # what the zone's volumes may take in all
    allocated_gb: int  # the sizes of its volumes (files are sparse: the disk holds less)
    volumes: list[StorageVolume] = []
    snapshots: list[StorageSnapshot] = []


class AttachVolumeRequest(BaseModel):
    volume_id: str = Field(max_length=20)
    instance_id: str = Field(max_length=20)
    device: str = Field(max_length=32)  # as the user named it: /dev/sdf, /dev/xvdf, /dev/vdf


class DetachVolumeRequest(BaseModel):
    volume_id: str = Field(max_length=20)
    instance_id: str = Field("", max_length=20)
    force: bool = False  # detach in the CC's books even if the node does not answer


class CreateSnapshotRequest(BaseModel):
    snapshot_id: str = Field(max_length=20)
    volume_id: str = Field(max_length=20)


class SnapshotIdRequest(BaseModel):
    snapshot_id: str = Field(max_length=20)


class StorageSnapshot(BaseModel):
    snapshot_id: str
    volume_id: str = ""
    state: SnapshotState
    progress: int = 0  # percent
    size_gb: int = 0
    stored_bytes: int = 0  # compressed bytes this snapshot added to Walrus
    detail: str = ""


# --- CC -> NC -------------------------------------------------------------------------------------------
class IscsiTarget(BaseModel):
    """Where a node finds a volume: a tgt target on the storage host, opened with a per-attachment initiator
    name that the target's ACL admits (and no other)."""

    host: str = Field(max_length=255)
    port: int = Field(ge=1, le=65535)
    iqn: str = Field(max_length=223)
    lun: int = Field(1, ge=0, le=255)
    initiator: str = Field(max_length=223)


class RbdTarget(BaseModel):
    """Where a node finds a volume kept in Ceph: an RBD image, opened by QEMU's rbd driver through these monitors
    with the node's own Ceph key (never sent over the wire)."""

    pool: str = Field(max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    image: str = Field(max_length=200, pattern=r"^[A-Za-z0-9_.-]+$")
    monitors: list[str] = Field(min_length=1, max_length=16)  # HOST:PORT


class NodeAttachRequest(BaseModel):
    instance_id: str = Field(max_length=20)
    volume_id: str = Field(max_length=20)
    device: str = Field(max_length=32)
    target: IscsiTarget | None = None  # one of the two: an iSCSI export, or an RBD image
    rbd: RbdTarget | None = None

    @model_validator(mode="after")
    def _one_source(self) -> NodeAttachRequest:
        if (self.target is None) == (self.rbd is None):
            raise ValueError("exactly one of target (iSCSI) and rbd")
        return self


class NodeDetachRequest(BaseModel):
    instance_id: str = Field(max_length=20)
    volume_id: str = Field(max_length=20)


class NodeAttachment(BaseModel):
    instance_id: str
    volume_id: str
    device: str = ""  # the guest's target device (vdX)
    attached: bool


StorageVolume.model_rebuild()
DescribeStorageResponse.model_rebuild()


# --- admin -> CLC (`koala admin volumes`) ---------------------------------------------------------------
class AdminVolume(BaseModel):
    volume_id: str
    owner_id: str
    zone: str
    size_gb: int
    state: str
    snapshot_id: str = ""
    instance_id: str = ""
    device: str = ""
    attach_state: str = ""


class AdminSnapshot(BaseModel):
    snapshot_id: str
    owner_id: str
    volume_id: str
    volume_size: int
    state: str
    progress: int
    public: bool = False
    shared_with: list[str] = []


class ZoneStorage(BaseModel):
    zone: str
    capacity_gb: int
    allocated_gb: int


class ListVolumesResponse(BaseModel):
    zones: list[ZoneStorage]
    volumes: list[AdminVolume]
    snapshots: list[AdminSnapshot]
