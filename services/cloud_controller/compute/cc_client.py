"""Every call from the CLC to the Cluster Controllers, one per zone (common/messages/clc_cc.py, network.py)."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel

from common.messages.bundle_tasks import BundleTaskRequest, NodeBundleStatus, StartBundleRequest
from common.messages.cc_nc import VmType
from common.messages.clc_cc import Ack as CcAck
from common.messages.clc_cc import (
    ConsoleOutputRequest,
    ConsoleOutputResponse,
    DeregisterNodeRequest,
    DescribeInstancesResponse,
    DescribeNodesResponse,
    DescribeResourcesRequest,
    DescribeResourcesResponse,
    ImageIdsRequest,
    InstanceIdsRequest,
    NodeInfo,
    RegisterNodeRequest,
    RunInstancesRequest,
    RunInstancesResponse,
    SuspendInstancesResponse,
    TerminateInstancesResponse,
)
from common.messages.migration import (
    DescribeMigrationsRequest,
    DescribeMigrationsResponse,
    MigrateInstancesRequest,
    MigrateInstancesResponse,
    NodeMaintenance,
    NodeRequest,
)
from common.messages.network import (
    AddressResponse,
    ConfigureNetworkRequest,
    DescribeNetworksRequest,
    DescribeNetworksResponse,
    DescribePublicAddressesResponse,
    NetworkResponse,
)
from common.messages.storage import DescribeStorageRequest, DescribeStorageResponse
from common.rpc import RpcClient
from services.cloud_controller.compute.errors import ComputeError

T = TypeVar("T", bound=BaseModel)


class ClusterClient:
    def __init__(self, client: RpcClient, clusters: dict[str, str], timeout: float = 30.0):
        # Not copied: the CLC passes its cluster registry's live map (clusters.py), so registered zones appear.
        self.client, self.clusters, self.timeout = client, clusters, timeout

    def url(self, zone: str) -> str:
        try:
            return self.clusters[zone]
        except KeyError:
            raise ComputeError("InvalidZone.NotFound", f"The zone '{zone}' does not exist") from None

    async def _call(
        self,
        zone: str,
        op: str,
        msg: BaseModel | None,
        response: type[T],
        idempotent: bool,
        timeout: float | None = None,
    ) -> T:
        return await self.client.call(
            self.url(zone), op, msg, response, idempotent=idempotent, expect_role="cc", timeout=timeout or self.timeout
        )

    async def run_instances(self, zone: str, request: RunInstancesRequest) -> RunInstancesResponse:
        # Not retried blindly: the CC deduplicates by instance id, but a retry after a timeout is the caller's call.
        return await self._call(zone, "RunInstances", request, RunInstancesResponse, idempotent=False)

    async def terminate_instances(self, zone: str, instance_ids: list[str]) -> TerminateInstancesResponse:
        return await self._call(
            zone, "TerminateInstances", InstanceIdsRequest(instance_ids=instance_ids), TerminateInstancesResponse, True
        )

    async def suspend_instances(
        self, zone: str, instance_ids: list[str], resume: bool = False
    ) -> SuspendInstancesResponse:
        """SuspendInstances / ResumeInstances: libvirt save or restore of the guests on their nodes."""
        return await self._call(
            zone,
            "ResumeInstances" if resume else "SuspendInstances",
            InstanceIdsRequest(instance_ids=instance_ids),
            SuspendInstancesResponse,
            True,
            timeout=120,
        )

    async def reboot_instances(self, zone: str, instance_ids: list[str]) -> CcAck:
        return await self._call(zone, "RebootInstances", InstanceIdsRequest(instance_ids=instance_ids), CcAck, True)

    async def describe_instances(self, zone: str, instance_ids: list[str] | None = None) -> DescribeInstancesResponse:
        return await self._call(
            zone,
            "DescribeInstances",
            InstanceIdsRequest(instance_ids=instance_ids or []),
            DescribeInstancesResponse,
            True,
        )

    async def describe_resources(
        self, zone: str, vm_types: list[VmType], timeout: float = 10.0
    ) -> DescribeResourcesResponse:
        return await self._call(
            zone,
            "DescribeResources",
            DescribeResourcesRequest(vm_types=vm_types),
            DescribeResourcesResponse,
            True,
            timeout,
        )

    async def describe_public_addresses(self, zone: str) -> DescribePublicAddressesResponse:
        return await self._call(zone, "DescribePublicAddresses", None, DescribePublicAddressesResponse, True, 10)

    async def address(self, zone: str, operation: str, message: BaseModel) -> AddressResponse:
        """AssignAddress / UnassignAddress: the elastic IP's NAT on the zone's router."""
        return await self._call(zone, operation, message, AddressResponse, True)

    async def forget_images(self, zone: str, image_ids: list[str]) -> CcAck:
        """A remote zone: these local images are deregistered, their remote copies go (bursting)."""
        return await self._call(zone, "ForgetImages", ImageIdsRequest(image_ids=image_ids), CcAck, True, 10)

    async def configure_network(self, zone: str, request: ConfigureNetworkRequest) -> NetworkResponse:
        return await self._call(zone, "ConfigureNetwork", request, NetworkResponse, True)

    async def describe_networks(self, zone: str, request: DescribeNetworksRequest) -> DescribeNetworksResponse:
        return await self._call(zone, "DescribeNetworks", request, DescribeNetworksResponse, True, 10)

    async def describe_nodes(self, zone: str, timeout: float = 10) -> DescribeNodesResponse:
        return await self._call(zone, "DescribeNodes", None, DescribeNodesResponse, True, timeout)

    async def register_node(self, zone: str, request: RegisterNodeRequest) -> NodeInfo:
        return await self._call(zone, "RegisterNode", request, NodeInfo, False)

    async def deregister_node(self, zone: str, request: DeregisterNodeRequest) -> CcAck:
        return await self._call(zone, "DeregisterNode", request, CcAck, False)

    async def describe_migrations(self, zone: str, timeout: float = 10) -> DescribeMigrationsResponse:
        """The zone's live migrations, running and recent (issue 21)."""
        return await self._call(zone, "DescribeMigrations", DescribeMigrationsRequest(), DescribeMigrationsResponse,
                                True, timeout)  # fmt: skip

    async def migrate_instances(self, zone: str, request: MigrateInstancesRequest) -> MigrateInstancesResponse:
        return await self._call(zone, "MigrateInstances", request, MigrateInstancesResponse, False)

    async def evacuate_node(self, zone: str, request: NodeRequest) -> NodeMaintenance:
        return await self._call(zone, "EvacuateNode", request, NodeMaintenance, True)

    async def restore_node(self, zone: str, request: NodeRequest) -> NodeMaintenance:
        return await self._call(zone, "RestoreNode", request, NodeMaintenance, True)

    async def storage(self, zone: str, operation: str, message: BaseModel, answer: type[T], timeout: float) -> T:
        """The zone's block storage (common/messages/storage.py: CreateVolume, AttachVolume, CreateSnapshot, ...);
        idempotent: the CC keys volumes and snapshots by their ids."""
        return await self._call(zone, operation, message, answer, True, timeout)

    async def describe_storage(self, zone: str) -> DescribeStorageResponse:
        return await self._call(zone, "DescribeStorage", DescribeStorageRequest(), DescribeStorageResponse, True, 10)

    async def console_output(self, zone: str, instance_id: str) -> ConsoleOutputResponse:
        return await self._call(
            zone, "GetConsoleOutput", ConsoleOutputRequest(instance_id=instance_id), ConsoleOutputResponse, True
        )

    async def bundle_task(
        self, zone: str, op: str, message: StartBundleRequest | BundleTaskRequest
    ) -> NodeBundleStatus:
        """BundleInstance, DescribeBundleTask or CancelBundleTask, forwarded by the CC to the instance's node
        (idempotent: the node keys tasks by bundle id)."""
        return await self._call(zone, op, message, NodeBundleStatus, True, 60.0)
