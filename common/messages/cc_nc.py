"""The CC <-> NC interface (Eucalyptus's ncRunInstance, ncDescribeResource, ...), as pydantic models.

The CC calls the NC's operations (role cc); the NC pushes every instance state change to the CC at once with
`NotifyInstances` (role nc), and the CC's polls of `DescribeInstances` are the safety net.
Memory is in MiB, disk in GB (GiB) throughout, never mixed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from common.messages.storage import IscsiTarget, RbdTarget

NcState = Literal["Pending", "Extant", "Teardown"]
MAX_USER_DATA = 16384  # bytes before base64, as EC2


class VmType(BaseModel):
    name: str = Field(max_length=64)
    cores: int = Field(ge=1)
    memory_mb: int = Field(ge=1)
    disk_gb: int = Field(ge=1)


class NetConfig(BaseModel):
    private_mac: str = ""
    private_ip: str = ""
    public_ip: str = ""
    vlan: int = -1  # MANAGED mode's VLAN (one per security group network); -1 when unused
    network_index: int = -1
    bridge: str = ""  # the bridge to plug the guest into (SYSTEM/STATIC: VNET_BRIDGE; MANAGED: per network)


class ImageRef(BaseModel):
    """An image to fetch from Walrus with GetDecryptedImage: its id and manifest location bucket/key."""

    id: str
    manifest: str = Field(max_length=2048)  # "bucket/path/name.manifest.xml"
    # The image's registered architecture (i386, x86_64, arm64): a remote zone registers its copy with it.
    architecture: str = Field("", pattern=r"^[a-z0-9_]{0,16}$")


class LaunchVolume(BaseModel):
    """An EBS volume an instance boots with (its root, or a launch BlockDeviceMapping's): the CC exports it to the
    instance's node before the node starts the domain, at every (re)start of an EBS-backed instance."""

    volume_id: str = Field(max_length=20)
    device: str = Field(max_length=32)  # as the user named it (/dev/sda1, /dev/sdf)
    root: bool = False


class BootVolume(LaunchVolume):
    """A LaunchVolume with where the node finds it: plugged into the domain when it is created (the root disk
    first), through QEMU's iSCSI initiator with the attachment's initiator name, or (a zone keeping its volumes in
    Ceph) QEMU's rbd driver with the node's own key (see common/messages/storage.py)."""

    target: IscsiTarget | None = None  # one of the two
    rbd: RbdTarget | None = None

    @model_validator(mode="after")
    def _one_source(self) -> BootVolume:
        if (self.target is None) == (self.rbd is None):
            raise ValueError("exactly one of target (iSCSI) and rbd")
        return self


class LaunchSpec(BaseModel):
    """What a reservation's instances share, the one launch-spec model: the CLC sends it with RunInstances (with
    the instances), the CC stores it per reservation (so a RunInstance can be sent again after a restart) and
    sends it to the NC with RunInstance (with the one instance)."""

    owner_id: str  # the account that owns the instances
    image: ImageRef
    kernel: ImageRef | None = None
    ramdisk: ImageRef | None = None
    vm_type: VmType
    key_name: str = ""
    ssh_public_key: str = Field("", max_length=16384)
    user_data: str = Field("", max_length=MAX_USER_DATA * 2)  # base64
    group_names: list[str] = []
    # EBS-backed launches: instance id -> the volumes it boots with (the CC exports them to the instance's node and
    # sends them, with their targets, as RunInstanceRequest.volumes).
    boot_volumes: dict[str, list[LaunchVolume]] = Field(default={}, max_length=10000)

    @classmethod
    def of(cls, request: LaunchSpec) -> LaunchSpec:
        """The spec part of a request that extends it (RunInstances), without its other fields."""
        return cls.model_validate({name: getattr(request, name) for name in cls.model_fields})


class RunInstanceRequest(LaunchSpec):
    instance_id: str
    reservation_id: str
    launch_index: int = 0
    net: NetConfig = NetConfig()
    platform: str = "linux"
    volumes: list[BootVolume] = Field(default=[], max_length=26)  # EBS-backed: the root volume replaces the image


class InstanceInfo(BaseModel):
    instance_id: str
    reservation_id: str = ""
    owner_id: str = ""
    image_id: str = ""
    kernel_id: str = ""
    ramdisk_id: str = ""
    vm_type: VmType | None = None
    key_name: str = ""
    launch_index: int = 0
    group_names: list[str] = []
    net: NetConfig = NetConfig()
    state: NcState
    detail: str = ""  # the NC's internal state: staging, booting, running, shutoff, crashed, ...
    reason: str = ""  # why it went to Teardown, when it did
    launch_time: float = 0.0
    updated_at: float = 0.0


MAX_BATCH = 100  # requests in one RunInstances or TerminateInstances call


class RunInstancesRequest(BaseModel):
    """Several RunInstance requests to one node in one call (the CC coalesces what it sends to a node at once)."""

    instances: list[RunInstanceRequest] = Field(min_length=1, max_length=MAX_BATCH)


class TerminateInstancesRequest(BaseModel):
    """Several TerminateInstance requests to one node in one call."""

    instance_ids: list[str] = Field(min_length=1, max_length=MAX_BATCH)


class InstanceResult(BaseModel):
    """One request's answer: its InstanceInfo, or the error the single call would have answered (status, code)."""

    info: InstanceInfo | None = None
    status: int = 0
    code: str = ""
    message: str = ""


class InstanceResults(BaseModel):
    """The answer to RunInstances and TerminateInstances."""

    results: list[InstanceResult]  # in the order of the request


class InstanceIdRequest(BaseModel):
    instance_id: str


class DescribeInstancesRequest(BaseModel):
    instance_ids: list[str] = []  # empty: all


class DescribeInstancesResponse(BaseModel):
    instances: list[InstanceInfo]


class DescribeResourceResponse(BaseModel):
    node_status: Literal["enabled", "disabled"] = "enabled"
    memory_max_mb: int
    memory_available_mb: int
    disk_max_gb: int
    disk_available_gb: int
    cores_max: int
    cores_available: int
    instances: int = 0
    hypervisor: str = ""  # xen, kvm, qemu or test
    unknown_domains: list[str] = []  # domains that look like Koala's but have no record here (never destroyed)
    monitor_sweeps: int = 0  # sweeps comparing libvirt's domains with the records, since the NC started


class ConsoleOutputResponse(BaseModel):
    instance_id: str
    output: str  # base64 of the last 64 KiB of the serial console


class StartNetworkRequest(BaseModel):
    vlan: int = -1
    bridge: str = ""
    peers: list[str] = []


class NotifyInstancesRequest(BaseModel):
    """NC -> CC: instances whose state changed (or all of them, after a restart)."""

    node_id: str
    instances: list[InstanceInfo]
    full: bool = False  # true when `instances` is the NC's complete list


class Ack(BaseModel):
    ok: bool = True
