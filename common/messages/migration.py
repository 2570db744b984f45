"""Live migration between the NCs of a zone, driven by the CC (issue 21), as pydantic models.

CC -> target NC: PrepareMigration (the instance's launch request: image cached, disks made empty, config drive,
bridge; the instance recorded as Pending/migrating-in) -> MigrationTarget. CC -> source NC: MigrateInstance
(libvirt peer-to-peer migration to the target's libvirtd over TLS, disks copied) and DescribeMigration (progress).
Then CommitMigration on the target (with the source's console history) and ReleaseMigration on both: the source
lets its copy go once the target runs it; the target drops its prepared copy when the migration failed.
Admin (or CLC) -> CC: MigrateInstances, DescribeMigrations, EvacuateNode, RestoreNode.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from common.messages.cc_nc import RunInstanceRequest
from common.messages.storage import NodeAttachRequest

NodeMigrationState = Literal["none", "running", "completed", "failed", "gone"]
MigrationMode = Literal["live", "cold"]
MAX_CONSOLE = 96 * 1024  # base64 of the 64 KiB console tail
MAX_VOLUMES = 26  # vdb..vdz and the root: more disks than a guest has slots for
DiskXml = Annotated[str, Field(max_length=8192)]


class MigrationMarker(BaseModel):
    """The source's answer to MarkMigration: the random name of a file it wrote in the instance's directory. A target
    that finds the same file at its own path for the instance shares that directory (shared storage): nothing to
    copy, and no file of it to make or remove there."""

    instance_id: str
    marker: str = Field("", pattern=r"^[0-9a-f]{0,64}$")


class PrepareMigrationRequest(BaseModel):
    run: RunInstanceRequest  # its `volumes`: the boot volumes, each with the target node's own iSCSI initiator
    source_node: str = Field("", max_length=256)
    # The EBS volumes attached to the guest, each as the target node must open it (its own initiator name, admitted
    # by the export already, or the RBD image): they are shared, never copied.
    volumes: list[NodeAttachRequest] = Field([], max_length=MAX_VOLUMES)
    marker: str = Field("", pattern=r"^[0-9a-f]{0,64}$")  # MigrationMarker.marker ('' when the source wrote none)


class MigrationTarget(BaseModel):
    """Where the target NC put the instance, so the source can rewrite its domain's paths, and how to reach the
    target's libvirtd (and QEMU's incoming streams)."""

    instance_id: str
    node_id: str = ""
    libvirt_uri: str = ""  # qemu+tls://ADDRESS/system
    address: str = ""  # for QEMU's memory and disk streams
    instance_dir: str
    kernel: str = ""
    ramdisk: str = ""
    shared: bool = False  # the target found the source's marker: the instance's directory is on shared storage
    # volume id -> the <disk> the target made for it (its own initiator, or its own libvirt secret for RBD): the
    # source puts its <source> and <auth> into the destination XML
    volume_disks: dict[str, DiskXml] = Field({}, max_length=MAX_VOLUMES)


class MigrateInstanceRequest(BaseModel):
    instance_id: str
    target: MigrationTarget
    mode: MigrationMode = "live"


class MigrationStatus(BaseModel):
    instance_id: str
    state: NodeMigrationState
    target_node: str = ""
    error: str = ""
    data_total: int = 0  # bytes, memory and disks
    data_processed: int = 0
    data_remaining: int = 0
    elapsed_ms: int = 0
    downtime_ms: int = 0


class CommitMigrationRequest(BaseModel):
    instance_id: str
    console: str = Field("", max_length=MAX_CONSOLE)  # base64 of the source's console tail


class MigrationLanded(BaseModel):
    """The target's answer to CommitMigration: the instance's state there, and libvirt's figures of the incoming
    migration (the source cannot read them once its domain is gone)."""

    instance_id: str
    state: str
    detail: str = ""
    elapsed_ms: int = 0
    downtime_ms: int = 0


class ReleaseMigrationRequest(BaseModel):
    instance_id: str
    outcome: Literal["moved", "failed"]  # moved: on the source; failed: on the target
    target_node: str = Field("", max_length=256)


# --- admin / CLC -> CC ---------------------------------------------------------------------------------------
class MigrateInstancesRequest(BaseModel):
    instance_ids: list[str] = Field(min_length=1, max_length=1000)
    target_node: str = Field("", max_length=256)  # node id or URL; '' lets the placement policy choose
    mode: MigrationMode = "live"


class MigrationInfo(BaseModel):
    instance_id: str
    source_node: str
    target_node: str
    mode: MigrationMode = "live"
    state: str  # preparing, migrating, finishing, aborting, done, failed
    error: str = ""
    progress: int = 0  # percent of the data copied
    elapsed_ms: int = 0  # libvirt's figures for the copy: how long it took
    downtime_ms: int = 0  # and how long the guest was paused at the switch-over
    started_at: float = 0.0
    updated_at: float = 0.0


class MigrateInstancesResponse(BaseModel):
    migrations: list[MigrationInfo] = []
    errors: dict[str, str] = {}


class DescribeMigrationsRequest(BaseModel):
    instance_ids: list[str] = Field([], max_length=1000)


class DescribeMigrationsResponse(BaseModel):
    migrations: list[MigrationInfo]


class NodeRequest(BaseModel):
    node: str = Field(min_length=1, max_length=256)  # node id or URL


class NodeMaintenance(BaseModel):
    node: str
    state: Literal["enabled", "evacuating", "evacuated"]
    migrations: list[MigrationInfo] = []
    errors: dict[str, str] = {}
