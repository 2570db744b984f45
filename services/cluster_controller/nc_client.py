"""Every call the CC makes to a Node Controller, typed: one method per NC operation, with its timeout.

The CC's parts (the cluster engine, node health, power saving, block storage) reach the NCs only through this
client, so an operation's request and answer types, its timeout and whether it may be retried are said once.
Errors are the RPC layer's: `RpcError` (and `PeerUnreachable` when the node does not answer).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from common.messages import bundle_tasks, cc_nc
from common.messages.migration import (
    CommitMigrationRequest,
    MigrateInstanceRequest,
    MigrationLanded,
    MigrationMarker,
    MigrationStatus,
    MigrationTarget,
    PrepareMigrationRequest,
    ReleaseMigrationRequest,
)
from common.messages.storage import NodeAttachment, NodeAttachRequest, NodeDetachRequest
from common.rpc import Empty, RpcClient
from services.cluster_controller.node_batches import NodeBatches

BundleOperation = Literal["BundleInstance", "DescribeBundleTask", "CancelBundleTask"]
NC_ROLE = "nc"


class NcAnswer(BaseModel):
    """What the CC reads of an NC's answer to RunInstance/TerminateInstance/RebootInstance/PowerDown: the
    instance's state if the NC gives it (an InstanceInfo), nothing otherwise (an Ack)."""

    model_config = ConfigDict(extra="ignore")
    state: str | None = None
    detail: str = ""
    reason: str = ""


class NcClient:
    """The NC operations, signed, addressed by node URL. `timeout` is KOALA_NC_TIMEOUT (slow operations get a
    multiple of it); `run_timeout` is KOALA_RUN_TIMEOUT, for RunInstance, which stages the image first."""

    def __init__(self, client: RpcClient, timeout: float, run_timeout: float):
        self.client, self.timeout, self.run_timeout = client, timeout, run_timeout
        # RunInstance and TerminateInstance calls to one node at the same moment coalesced (node_batches.py).
        self.run_batches = NodeBatches(self._run_one, self._run_many, _json_size, cc_nc.MAX_BATCH)
        self.terminate_batches = NodeBatches(self._terminate_one, self._terminate_many, len, cc_nc.MAX_BATCH)

    async def node_id(self, url: str) -> str:
        """The node's service id, from its verified certificate (fetched once per node)."""
        return (await self.client.peer(url, NC_ROLE)).id

    async def describe_resource(self, url: str) -> cc_nc.DescribeResourceResponse:
        return await self.client.call(
            url, "DescribeResource", None, cc_nc.DescribeResourceResponse, timeout=self.timeout, expect_role=NC_ROLE
        )

    async def describe_instances(self, url: str, instance_ids: list[str] | None = None) -> list[cc_nc.InstanceInfo]:
        """The node's instances (all of them without `instance_ids`)."""
        answer = await self.client.call(
            url,
            "DescribeInstances",
            cc_nc.DescribeInstancesRequest(instance_ids=instance_ids or []),
            cc_nc.DescribeInstancesResponse,
            timeout=self.timeout,
            expect_role=NC_ROLE,
        )
        return answer.instances

    async def run_instance(self, url: str, request: cc_nc.RunInstanceRequest) -> NcAnswer:
        """RunInstance, sent with the others made to the same node at the same moment."""
        return _answer(await self.run_batches.call(url, request))

    async def _run_one(self, url: str, request: cc_nc.RunInstanceRequest) -> cc_nc.InstanceInfo:
        return await self.client.call(
            url, "RunInstance", request, cc_nc.InstanceInfo, timeout=self.run_timeout, expect_role=NC_ROLE
        )

    async def _run_many(self, url: str, requests: list[cc_nc.RunInstanceRequest]) -> list[cc_nc.InstanceResult]:
        batch = cc_nc.RunInstancesRequest(instances=requests)
        answer = await self.client.call(
            url, "RunInstances", batch, cc_nc.InstanceResults, timeout=self.run_timeout, expect_role=NC_ROLE
        )
        return answer.results

    async def start_network(self, url: str, vlan: int, bridge: str) -> None:
        """The node's side of a network (its VLAN bridge)."""
        await self.client.call(
            url,
            "StartNetwork",
            cc_nc.StartNetworkRequest(vlan=vlan, bridge=bridge),
            NcAnswer,
            timeout=self.timeout,
            expect_role=NC_ROLE,
        )

    async def terminate_instance(self, url: str, instance_id: str, idempotent: bool = True) -> NcAnswer:
        """TerminateInstance; retried calls (idempotent) go with the others made to the node at the same moment."""
        if not idempotent:
            return await self._instance_call(url, "TerminateInstance", instance_id, 2, idempotent)
        return _answer(await self.terminate_batches.call(url, instance_id))

    async def _terminate_one(self, url: str, instance_id: str) -> cc_nc.InstanceInfo:
        return await self.client.call(
            url,
            "TerminateInstance",
            cc_nc.InstanceIdRequest(instance_id=instance_id),
            cc_nc.InstanceInfo,
            timeout=self.timeout * 2,
            idempotent=True,
            expect_role=NC_ROLE,
        )

    async def _terminate_many(self, url: str, instance_ids: list[str]) -> list[cc_nc.InstanceResult]:
        answer = await self.client.call(
            url,
            "TerminateInstances",
            cc_nc.TerminateInstancesRequest(instance_ids=instance_ids),
            cc_nc.InstanceResults,
            timeout=self.run_timeout,
            idempotent=True,
            expect_role=NC_ROLE,
        )
        return answer.results

    async def reboot_instance(self, url: str, instance_id: str) -> NcAnswer:
        return await self._instance_call(url, "RebootInstance", instance_id, 2, False)

    async def suspend_instance(self, url: str, instance_id: str) -> NcAnswer:
        return await self._instance_call(url, "SuspendInstance", instance_id, 4, False)

    async def resume_instance(self, url: str, instance_id: str) -> NcAnswer:
        return await self._instance_call(url, "ResumeInstance", instance_id, 4, False)

    async def console_output(self, url: str, instance_id: str) -> str:
        """Base64 of the end of the instance's serial console."""
        answer = await self.client.call(
            url,
            "GetConsoleOutput",
            cc_nc.InstanceIdRequest(instance_id=instance_id),
            cc_nc.ConsoleOutputResponse,
            timeout=self.timeout * 2,
            idempotent=True,
            expect_role=NC_ROLE,
        )
        return answer.output

    async def bundle(
        self,
        url: str,
        operation: BundleOperation,
        request: bundle_tasks.StartBundleRequest | bundle_tasks.BundleTaskRequest,
    ) -> bundle_tasks.NodeBundleStatus:
        return await self.client.call(
            url,
            operation,
            request,
            bundle_tasks.NodeBundleStatus,
            timeout=self.timeout * 2,
            idempotent=True,  # the node keys tasks by bundle id
            expect_role=NC_ROLE,
        )

    async def power_down(self, url: str) -> None:
        await self.client.call(url, "PowerDown", Empty(), NcAnswer, timeout=self.timeout, expect_role=NC_ROLE)

    async def attach_volume(self, url: str, request: NodeAttachRequest, timeout: float) -> NodeAttachment:
        return await self.client.call(
            url, "AttachVolume", request, NodeAttachment, timeout=timeout, expect_role=NC_ROLE
        )

    async def detach_volume(self, url: str, request: NodeDetachRequest, timeout: float) -> NodeAttachment:
        return await self.client.call(
            url, "DetachVolume", request, NodeAttachment, timeout=timeout, idempotent=True, expect_role=NC_ROLE
        )

    # --- live migration (migration.py) ---------------------------------------------------------------------
    async def prepare_migration(self, url: str, request: PrepareMigrationRequest) -> MigrationTarget:
        """On the target: the instance's image cached and its disks made, as for RunInstance."""
        return await self.client.call(
            url, "PrepareMigration", request, MigrationTarget, timeout=self.run_timeout, expect_role=NC_ROLE
        )

    async def mark_migration(self, url: str, instance_id: str) -> MigrationMarker:
        """On the source: a marker file in the instance's directory, for the target to tell shared storage."""
        request = cc_nc.InstanceIdRequest(instance_id=instance_id)
        return await self.client.call(
            url, "MarkMigration", request, MigrationMarker, timeout=self.timeout, idempotent=True, expect_role=NC_ROLE
        )

    async def migrate_instance(self, url: str, request: MigrateInstanceRequest) -> MigrationStatus:
        return await self.client.call(
            url, "MigrateInstance", request, MigrationStatus, timeout=self.timeout, expect_role=NC_ROLE
        )

    async def describe_migration(self, url: str, instance_id: str) -> MigrationStatus:
        return await self.client.call(
            url,
            "DescribeMigration",
            cc_nc.InstanceIdRequest(instance_id=instance_id),
            MigrationStatus,
            timeout=self.timeout,
            idempotent=True,
            expect_role=NC_ROLE,
        )

    async def commit_migration(self, url: str, request: CommitMigrationRequest) -> MigrationLanded:
        return await self.client.call(
            url, "CommitMigration", request, MigrationLanded, timeout=self.timeout * 2, expect_role=NC_ROLE
        )

    async def release_migration(self, url: str, request: ReleaseMigrationRequest) -> NcAnswer:
        return await self.client.call(
            url,
            "ReleaseMigration",
            request,
            NcAnswer,
            timeout=self.timeout * 2,
            idempotent=True,  # the node keeps the outcome until asked again
            expect_role=NC_ROLE,
        )

    async def _instance_call(
        self, url: str, operation: str, instance_id: str, slowness: int, idempotent: bool
    ) -> NcAnswer:
        return await self.client.call(
            url,
            operation,
            cc_nc.InstanceIdRequest(instance_id=instance_id),
            NcAnswer,
            timeout=self.timeout * slowness,
            idempotent=idempotent,
            expect_role=NC_ROLE,
        )


def _json_size(request: cc_nc.RunInstanceRequest) -> int:
    return len(request.model_dump_json())


def _answer(info: cc_nc.InstanceInfo) -> NcAnswer:
    return NcAnswer(state=info.state, detail=info.detail, reason=info.reason)
