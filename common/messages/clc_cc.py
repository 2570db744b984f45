"""The CLC <-> CC interface, as pydantic models.

The CLC calls the CC's operations (role clc); the CC pushes instance state changes up with `NotifyInstances`
(role cc). One RunInstances call carries one reservation with N instances; the CC answers per instance.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from common.messages.cc_nc import LaunchSpec, NetConfig, VmType

ClusterState = Literal["Pending", "Extant", "Teardown", "Unknown"]


class InstanceLaunch(BaseModel):
    instance_id: str
    launch_index: int
    net: NetConfig = NetConfig()
    # The node the CLC's lease scheduler mapped it to (its slot table keeps room there for reservations); the CC
    # places it there when every instance of the request has one and they fit, else by its own policy.
    node_id: str = Field("", max_length=300)


class RunInstancesRequest(LaunchSpec):
    reservation_id: str
    instances: list[InstanceLaunch] = Field(min_length=1, max_length=10000)
    min_count: int = Field(1, ge=1)


class InstancePlacement(BaseModel):
    instance_id: str
    node_id: str = ""  # empty when it could not be placed
    error: str = ""


class RunInstancesResponse(BaseModel):
    """When fewer than min_count fit, nothing is started and every instance carries the reason."""

    instances: list[InstancePlacement]


class ClusterInstance(BaseModel):
    instance_id: str
    reservation_id: str = ""
    owner_id: str = ""
    node_id: str = ""
    state: ClusterState
    detail: str = ""
    reason: str = ""
    net: NetConfig = NetConfig()
    launch_time: float = 0.0


class InstanceIdsRequest(BaseModel):
    instance_ids: list[str] = Field(default=[], max_length=10000)


class DescribeInstancesResponse(BaseModel):
    instances: list[ClusterInstance]


class TerminateInstancesResponse(BaseModel):
    instance_ids: list[str]  # the ones the CC knew and is terminating


class DescribeResourcesRequest(BaseModel):
    vm_types: list[VmType]


class ResourceAvailability(BaseModel):
    vm_type: str
    available: int
    max: int


class DescribeResourcesResponse(BaseModel):
    zone: str
    resources: list[ResourceAvailability]
    nodes_up: int = 0
    nodes_total: int = 0
    remote: bool = False  # a zone whose instances run in a remote cloud: offered to bursting launches only


class ConsoleOutputRequest(BaseModel):
    instance_id: str


class ConsoleOutputResponse(BaseModel):
    instance_id: str
    output: str  # base64


class NotifyInstancesRequest(BaseModel):
    """CC -> CLC: instances whose state changed (or all of them, when `full`)."""

    zone: str
    instances: list[ClusterInstance]
    full: bool = False


class Ack(BaseModel):
    ok: bool = True


class ImageIdsRequest(BaseModel):
    """Local images by id. CLC -> remote zone CC `ForgetImages`: deregistered here, their remote copies go. CC -> CLC
    `KnownImages`: which of these are still registered (the answer, as ImageIdsResponse)."""

    image_ids: list[Annotated[str, Field(max_length=32)]] = Field(default=[], max_length=10000)


class ImageIdsResponse(BaseModel):
    image_ids: list[str]


class SuspendInstancesResponse(BaseModel):
    """SuspendInstances / ResumeInstances: the instances done, and why the others were not."""

    instance_ids: list[str]
    errors: dict[str, str] = {}


class RebootInstancesResponse(BaseModel):
    instance_ids: list[str]  # the ones the CC knew and asked their node to reboot
    ok: bool = True


# Node registry (role clc or admin): nodes come from the CC's NODES setting and from these calls.
class RegisterNodeRequest(BaseModel):
    node: str = Field(min_length=1, max_length=300)  # HOST, HOST:PORT or http://HOST:PORT
    mac: str = Field("", max_length=17)  # for POWERSAVE's Wake-on-LAN; empty: the node is never powered down


class DeregisterNodeRequest(BaseModel):
    node: str = Field(min_length=1, max_length=300)


NodeStateName = Literal["UP", "DOWN", "ASLEEP", "WAKING"]


class NodeInfo(BaseModel):
    url: str
    node_id: str = ""  # the NC's service id, once it has answered
    state: NodeStateName
    source: Literal["config", "registered"]
    mac: str = ""
    memory_max_mb: int = 0
    memory_available_mb: int = 0
    disk_max_gb: int = 0
    disk_available_gb: int = 0
    cores_max: int = 0
    cores_available: int = 0
    instances: int = 0  # live instances the CC has placed there
    maintenance: bool = False  # evacuated (EvacuateNode): nothing is placed there until RestoreNode


class DescribeNodesResponse(BaseModel):
    zone: str
    policy: str
    nodes: list[NodeInfo]
