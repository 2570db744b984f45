"""The Cluster Controller: node registry and health, placement, fan-out, the cluster's network.

This module wires the signed operations to the cluster engine (cluster.py). Callers: the CLC (role clc)
launches, terminates, reboots and reads consoles; the CLC and the admin tools describe and manage nodes; the
NCs (role nc) push their instance changes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from common.ids import is_id
from common.messages import bundle_tasks, cc_nc, clc_cc, migration
from common.rpc import Caller, RpcError
from common.service import Service
from services.cluster_controller import network, storage
from services.cluster_controller.cluster import Cluster
from services.cluster_controller.config import ClusterControllerConfig
from services.cluster_controller.migration import Migrations
from services.cluster_controller.nc_client import BundleOperation
from services.cluster_controller.remote import rpc as remote_rpc
from services.cluster_controller.remote.setup import open_zone
from services.cluster_controller.remote.zone import RemoteZone
from services.cluster_controller.store import Store

CLC = frozenset({"clc"})
CLC_OR_ADMIN = frozenset({"clc", "admin"})
NC = frozenset({"nc"})
MAX_VM_TYPES = 100
BundleRequest = bundle_tasks.StartBundleRequest | bundle_tasks.BundleTaskRequest


class ClusterControllerService(Service):
    role = "cc"
    config_class = ClusterControllerConfig
    config: ClusterControllerConfig
    client_max_size = 4 << 20  # RunInstances carries up to 10,000 instances (about 1.5 MB of JSON)
    cluster: Cluster | RemoteZone

    def __init__(self, config: ClusterControllerConfig):
        super().__init__(config)
        self.rpc.max_body = self.client_max_size
        add = self.rpc.add
        add("RunInstances", self._run_instances, CLC, clc_cc.RunInstancesRequest)
        add("TerminateInstances", self._terminate_instances, CLC, clc_cc.InstanceIdsRequest)
        add("RebootInstances", self._reboot_instances, CLC, clc_cc.InstanceIdsRequest)
        add("SuspendInstances", self._suspend_instances, CLC, clc_cc.InstanceIdsRequest)
        add("ResumeInstances", self._resume_instances, CLC, clc_cc.InstanceIdsRequest)
        add("GetConsoleOutput", self._console_output, CLC, clc_cc.ConsoleOutputRequest)
        add("BundleInstance", self._bundle_call("BundleInstance"), CLC, bundle_tasks.StartBundleRequest)
        add("DescribeBundleTask", self._bundle_call("DescribeBundleTask"), CLC, bundle_tasks.BundleTaskRequest)
        add("CancelBundleTask", self._bundle_call("CancelBundleTask"), CLC, bundle_tasks.BundleTaskRequest)
        add("DescribeInstances", self._describe_instances, CLC_OR_ADMIN, clc_cc.InstanceIdsRequest)
        add("DescribeResources", self._describe_resources, CLC_OR_ADMIN, clc_cc.DescribeResourcesRequest)
        add("DescribeNodes", self._describe_nodes, CLC_OR_ADMIN)
        add("RegisterNode", self._register_node, CLC_OR_ADMIN, clc_cc.RegisterNodeRequest)
        add("DeregisterNode", self._deregister_node, CLC_OR_ADMIN, clc_cc.DeregisterNodeRequest)
        add("NotifyInstances", self._notify_instances, NC, cc_nc.NotifyInstancesRequest)
        add("MigrateInstances", self._migrate_instances, CLC_OR_ADMIN, migration.MigrateInstancesRequest)
        add("DescribeMigrations", self._describe_migrations, CLC_OR_ADMIN, migration.DescribeMigrationsRequest)
        add("EvacuateNode", self._evacuate_node, CLC_OR_ADMIN, migration.NodeRequest)
        add("RestoreNode", self._restore_node, CLC_OR_ADMIN, migration.NodeRequest)
        add("DescribeNodeMaintenance", self._node_maintenance, CLC_OR_ADMIN, migration.NodeRequest)
        if config.remote:  # a zone in a remote EC2 cloud (remote/): no local network, no local block storage
            self.network = None
            self.storage = None
            remote_rpc.register(self.rpc, self)
        else:
            self.network = network.install(self)  # StartNetwork, ConfigureNetwork, AssignAddress, ... (network/)
            self.storage = storage.install(self)  # volumes, attachments, snapshots (storage/)

    def peer_list(self) -> list[tuple[str, str]]:
        return [(url, "nc") for url in self.config.node_urls()]

    async def on_start(self) -> None:
        if self.config.remote:
            self.cluster = await open_zone(self)
            return
        self.config.KOALA_STATE_DIR.mkdir(parents=True, exist_ok=True)
        store = await Store.open(self.config.KOALA_STATE_DIR / "cc.db")
        cluster = self.cluster = Cluster(self.config, self.client, store)
        # The parts that ask the cluster about its instances, wired before they start (the app's startup hooks).
        if self.network is not None:
            cluster.on_end.append(self.network.remove_instance)  # DHCP entry and elastic IP go at once
            self.network.instance_source = cluster.live_nets
        if self.storage is not None:
            self.storage.node_of = cluster.node_of
            self.storage.instance_live = cluster.instance_live
            cluster.boot_volumes = self.storage.boot_attach  # EBS-backed instances' volumes, at each start
            # The instance's volumes follow it when it migrates; attach and detach wait until it settled.
            cluster.migrations.refusals.append(self.storage.move_refusal)
            cluster.migrations.volumes = self.storage
            self.storage.migrating = lambda instance_id: cluster.migrations.active_for(instance_id) is not None
        await self.cluster.start()

    async def on_stop(self) -> None:
        await self.cluster.stop()
        await self.cluster.store.close()

    # --- CLC operations -------------------------------------------------------------------------------
    async def _run_instances(self, request: clc_cc.RunInstancesRequest, caller: Caller) -> clc_cc.RunInstancesResponse:
        if self.network is None:
            return await self.cluster.run_instances(request)
        if all(is_id(launch.instance_id, "i") for launch in request.instances):  # else the cluster refuses it
            request = await network.prepare_launch(self.network, request)  # MAC, private IP, bridge, DHCP entry
        answer = await self.cluster.run_instances(request)
        await network.launched(self.network, answer)
        return answer

    async def _terminate_instances(
        self, request: clc_cc.InstanceIdsRequest, caller: Caller
    ) -> clc_cc.TerminateInstancesResponse:
        return clc_cc.TerminateInstancesResponse(instance_ids=await self.cluster.terminate(request.instance_ids))

    async def _reboot_instances(
        self, request: clc_cc.InstanceIdsRequest, caller: Caller
    ) -> clc_cc.RebootInstancesResponse:
        return clc_cc.RebootInstancesResponse(instance_ids=await self.cluster.reboot(request.instance_ids))

    def _bundle_call(
        self, op: BundleOperation
    ) -> Callable[[BundleRequest, Caller], Awaitable[bundle_tasks.NodeBundleStatus]]:
        async def forward(request: BundleRequest, caller: Caller) -> bundle_tasks.NodeBundleStatus:
            if not isinstance(self.cluster, Cluster):
                raise RpcError(400, "UnsupportedOperation", "BundleInstance is not offered in a remote zone")
            return await self.cluster.bundle_call(op, request)

        return forward

    async def _suspend_instances(
        self, request: clc_cc.InstanceIdsRequest, caller: Caller
    ) -> clc_cc.SuspendInstancesResponse:
        return await self._local().suspend(request.instance_ids)

    async def _resume_instances(
        self, request: clc_cc.InstanceIdsRequest, caller: Caller
    ) -> clc_cc.SuspendInstancesResponse:
        return await self._local().suspend(request.instance_ids, resume=True)

    def _local(self) -> Cluster:
        if not isinstance(self.cluster, Cluster):  # a remote zone's instances run in another cloud
            raise RpcError(400, "UnsupportedOperation", "instances of a remote zone cannot be suspended")
        return self.cluster

    async def _console_output(
        self, request: clc_cc.ConsoleOutputRequest, caller: Caller
    ) -> clc_cc.ConsoleOutputResponse:
        output = await self.cluster.console_output(request.instance_id)
        return clc_cc.ConsoleOutputResponse(instance_id=request.instance_id, output=output)

    async def _describe_instances(
        self, request: clc_cc.InstanceIdsRequest, caller: Caller
    ) -> clc_cc.DescribeInstancesResponse:
        return clc_cc.DescribeInstancesResponse(instances=self.cluster.describe_instances(request.instance_ids))

    async def _describe_resources(
        self, request: clc_cc.DescribeResourcesRequest, caller: Caller
    ) -> clc_cc.DescribeResourcesResponse:
        if len(request.vm_types) > MAX_VM_TYPES:
            raise RpcError(400, "InvalidRequest", f"at most {MAX_VM_TYPES} VM types per DescribeResources")
        return self.cluster.describe_resources(request.vm_types)

    async def _describe_nodes(self, _: object, caller: Caller) -> clc_cc.DescribeNodesResponse:
        return self.cluster.describe_nodes()

    async def _register_node(self, request: clc_cc.RegisterNodeRequest, caller: Caller) -> clc_cc.NodeInfo:
        return await self.cluster.register_node(request.node, request.mac)

    async def _deregister_node(self, request: clc_cc.DeregisterNodeRequest, caller: Caller) -> clc_cc.Ack:
        await self.cluster.deregister_node(request.node)
        return clc_cc.Ack()

    # --- migration and maintenance (migration.py) ------------------------------------------------------------
    async def _migrate_instances(
        self, request: migration.MigrateInstancesRequest, caller: Caller
    ) -> migration.MigrateInstancesResponse:
        return await self._migrating().migrate(request)

    async def _describe_migrations(
        self, request: migration.DescribeMigrationsRequest, caller: Caller
    ) -> migration.DescribeMigrationsResponse:
        return migration.DescribeMigrationsResponse(migrations=self._migrating().describe(request.instance_ids))

    async def _evacuate_node(self, request: migration.NodeRequest, caller: Caller) -> migration.NodeMaintenance:
        return await self._migrating().evacuate(request.node)

    async def _restore_node(self, request: migration.NodeRequest, caller: Caller) -> migration.NodeMaintenance:
        return await self._migrating().restore(request.node)

    async def _node_maintenance(self, request: migration.NodeRequest, caller: Caller) -> migration.NodeMaintenance:
        migrations = self._migrating()
        node = migrations.find_node(request.node)
        if node is None:
            raise RpcError(404, "NodeNotFound", f"no node {request.node!r} in this zone")
        return migrations.maintenance_info(node)

    def _migrating(self) -> Migrations:
        if not isinstance(self.cluster, Cluster):
            raise RpcError(400, "UnsupportedOperation", "instances of a remote zone cannot be migrated")
        return self.cluster.migrations

    # --- NC pushes ------------------------------------------------------------------------------------
    async def _notify_instances(self, request: cc_nc.NotifyInstancesRequest, caller: Caller) -> cc_nc.Ack:
        # The node is who signed the call, whatever the body says.
        self.cluster.node_notify(caller.id, request.instances, request.full)
        return cc_nc.Ack()
