"""The Node Controller: drives the hypervisor through libvirt.

Operations (signed internal RPC, role cc; admin too for the two read-only ones): RunInstance,
TerminateInstance, DescribeInstances, DescribeResource, RebootInstance, GetConsoleOutput, StartNetwork,
PowerDown, BundleInstance / DescribeBundleTask / CancelBundleTask (bundler.py). Every instance state change
is pushed to the CC with NotifyInstances, but for a RunInstance's admission and a TerminateInstance's end, which
their answers report.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import shlex
from pathlib import Path

import aiosqlite

from common.db import open_db
from common.decrypted_images import WalrusImages
from common.hostcmd import CommandFailed, SubprocessRunner
from common.messages.bundle_tasks import BundleTaskRequest, NodeBundleStatus, StartBundleRequest
from common.messages.cc_nc import (
    Ack,
    ConsoleOutputResponse,
    DescribeInstancesRequest,
    DescribeInstancesResponse,
    DescribeResourceResponse,
    InstanceIdRequest,
    InstanceInfo,
    InstanceResult,
    InstanceResults,
    RunInstanceRequest,
    RunInstancesRequest,
    StartNetworkRequest,
    TerminateInstancesRequest,
)
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
from common.rpc import Caller, Empty, RpcError
from common.service import Service
from services.node_controller import network, resources
from services.node_controller.bundler import Bundler
from services.node_controller.cache import ImageCache
from services.node_controller.config import NodeControllerConfig
from services.node_controller.hypervisor import Hypervisor, HypervisorError
from services.node_controller.instances import InstanceManager
from services.node_controller.migration import NodeMigrations
from services.node_controller.notifier import Notifier
from services.node_controller.volumes import LOGIN_TIMEOUT, Volumes

log = logging.getLogger("koala.nc")
CC = {"cc"}
CC_ADMIN = {"cc", "admin"}


class NodeControllerService(Service):
    role = "nc"
    config_class = NodeControllerConfig
    config: NodeControllerConfig

    def __init__(self, config: NodeControllerConfig):
        super().__init__(config)
        self.manager: InstanceManager | None = None
        self.volumes: Volumes | None = None
        self.bundler: Bundler | None = None
        self.migrations: NodeMigrations | None = None
        self.hv: Hypervisor | None = None
        self.db: aiosqlite.Connection | None = None
        self.powered_down = False
        self._starting: asyncio.Task[None] | None = None
        add = self.rpc.add
        add("RunInstance", self._run_instance, CC, RunInstanceRequest)
        add("RunInstances", self._run_instances, CC, RunInstancesRequest)
        add("TerminateInstances", self._terminate_instances, CC, TerminateInstancesRequest)
        add("TerminateInstance", self._terminate_instance, CC, InstanceIdRequest)
        add("DescribeInstances", self._describe_instances, CC_ADMIN, DescribeInstancesRequest)
        add("DescribeResource", self._describe_resource, CC_ADMIN)
        add("RebootInstance", self._reboot_instance, CC, InstanceIdRequest)
        add("SuspendInstance", self._suspend_instance, CC, InstanceIdRequest)
        add("ResumeInstance", self._resume_instance, CC, InstanceIdRequest)
        add("GetConsoleOutput", self._console_output, CC, InstanceIdRequest)
        add("StartNetwork", self._start_network, CC, StartNetworkRequest)
        add("PowerDown", self._power_down, CC)
        add("AttachVolume", self._attach_volume, CC, NodeAttachRequest)
        add("DetachVolume", self._detach_volume, CC, NodeDetachRequest)
        add("BundleInstance", self._bundle_instance, CC, StartBundleRequest)
        add("DescribeBundleTask", self._describe_bundle, CC, BundleTaskRequest)
        add("CancelBundleTask", self._cancel_bundle, CC, BundleTaskRequest)
        add("PrepareMigration", self._prepare_migration, CC, PrepareMigrationRequest)
        add("MarkMigration", self._mark_migration, CC, InstanceIdRequest)
        add("MigrateInstance", self._migrate_instance, CC, MigrateInstanceRequest)
        add("DescribeMigration", self._describe_migration, CC_ADMIN, InstanceIdRequest)
        add("CommitMigration", self._commit_migration, CC, CommitMigrationRequest)
        add("ReleaseMigration", self._release_migration, CC, ReleaseMigrationRequest)
        self.node_network = network.install(self)  # bridges/VLAN devices on demand (network.py)

    def peer_list(self) -> list[tuple[str, str]]:
        peers = []
        if self.config.KOALA_CC_URL:
            peers.append((self.config.KOALA_CC_URL, "cc"))
        if self.config.KOALA_WALRUS_URL:
            peers.append((self.config.KOALA_WALRUS_URL, "walrus"))
        return peers

    async def on_start(self) -> None:
        config = self.config
        config.KOALA_STATE_DIR.mkdir(parents=True, exist_ok=True)
        config.instance_path.mkdir(parents=True, exist_ok=True)
        self.db = await open_db(config.KOALA_STATE_DIR / "nc.db", "services.node_controller.migrations")
        self.hv = Hypervisor(config.libvirt_uri, self._on_event, self._on_reconnect)
        if await self.hv.start(timeout=config.KOALA_NC_LIBVIRT_WAIT):
            await self._start_manager()
        else:  # serve (503 NotReady) and keep trying: libvirtd may come up after the NC
            log.error("libvirt %s unreachable: operations answer NotReady until it is back", config.libvirt_uri)
            self._starting = asyncio.create_task(self._start_when_connected(), name="nc start")

    async def _start_when_connected(self) -> None:
        assert self.hv is not None
        await self.hv.connected.wait()
        await self._start_manager()

    async def _start_manager(self) -> None:
        config = self.config
        assert self.hv is not None and self.db is not None
        walrus = WalrusImages(self.client, config.KOALA_WALRUS_URL)
        cache = ImageCache(self.db, config.instance_path / ".cache", config.NC_CACHE_SIZE, walrus)
        await cache.start()
        notifier = Notifier(
            self.client,
            config.KOALA_CC_URL,
            self.identity.id,
            lambda i: self._snapshot(i),
            lambda ids: self.manager is not None and self.manager.launching_besides(ids),
        )
        manager = InstanceManager(config, self.db, self.hv, cache, notifier)
        cpus, memory_mb, hv_type = await self.hv.host()
        held_disk = 0
        async with self.db.execute("SELECT request FROM instances WHERE state != 'Teardown'") as cursor:
            for row in await cursor.fetchall():
                held_disk += RunInstanceRequest.model_validate_json(row[0]).vm_type.disk_gb
        manager.limits = await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: resources.limits(
                config.HYPERVISOR,
                cpus,
                memory_mb,
                config.instance_path,
                config.NC_CACHE_SIZE,
                held_disk,
                config.MAX_CORES,
                config.MAX_MEM,
                config.MAX_DISK,
                config.CPU_ALLOCATION_RATIO,
                config.RAM_ALLOCATION_RATIO,
                config.DISK_ALLOCATION_RATIO,
            ),
        )
        log.info("libvirt %s (%s): offering %s", config.libvirt_uri, hv_type, manager.limits)
        if config.HYPERVISOR in ("kvm", "qemu", "xen"):
            blocked = _not_traversable(config.instance_path)
            if blocked:
                log.warning(
                    "INSTANCE_PATH %s: %s is not searchable by others: the hypervisor's unprivileged "
                    "user (libvirt-qemu) will not reach the instance files",
                    config.instance_path,
                    blocked,
                )
        self.volumes = Volumes(self.db, self.hv, config.HYPERVISOR, manager.instances, config)
        if config.KOALA_VNET_NETNS:  # the volumes' login check from where this node's QEMU runs (tests)
            self.volumes.runner = SubprocessRunner(config.KOALA_VNET_NETNS, timeout=LOGIN_TIMEOUT)
        await manager.start()
        migrations = NodeMigrations(config, self.db, self.hv, manager, cache, self.identity.id, self.volumes)
        await migrations.adopt()
        self.migrations = migrations
        bundler = Bundler(self.db, manager, config.instance_path / ".bundles")
        await bundler.start()
        self.bundler = bundler
        notifier.start()
        self.manager = manager

    async def on_stop(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
        if self.bundler is not None:
            await self.bundler.stop()
        if self.migrations is not None:
            await self.migrations.stop()
        if self.manager is not None:
            await self.manager.stop()
            await self.manager.notifier.stop()
        if self.hv is not None:
            await self.hv.close()
        if self.db is not None:
            await self.db.close()

    def _snapshot(self, instance_id: str) -> InstanceInfo | None:
        return self.manager.snapshot(instance_id) if self.manager else None

    def _on_event(self, name: str, event: str, detail: int) -> None:
        if self.manager is not None:
            self.manager.on_event(name, event, detail)

    async def _on_reconnect(self) -> None:
        if self.manager is not None:
            log.info("libvirt reconnected: reconciling")
            try:
                await self.manager.reconcile()
            except HypervisorError as err:
                log.warning("reconcile after reconnect failed: %s", err)

    @property
    def _manager(self) -> InstanceManager:
        if self.manager is None:
            raise RpcError(503, "NotReady", "the node controller is starting")
        return self.manager

    # --- operations ---------------------------------------------------------------------------------------
    async def _run_instance(self, request: RunInstanceRequest, caller: Caller) -> InstanceInfo:
        if self.powered_down:
            raise RpcError(503, "NodePoweredDown", "this node is powering down")
        if self.node_network is not None:  # the guest's bridge (and VLAN device) exists and is named
            request = await network.prepare_run(self.node_network, request)
        return await self._manager.run(request)

    async def _run_instances(self, batch: RunInstancesRequest, caller: Caller) -> InstanceResults:
        """RunInstance for each request, all admitted together; each gets its own answer or error, as if sent alone.

        Together, not in turn: each admission checks the room left and takes it before its first await (in the
        order of the batch), so the records are written in one shared commit, the stagings start at once and their
        state changes share pushes, where one after the other each waited for its own commit."""

        async def one(request: RunInstanceRequest) -> InstanceResult:
            try:
                return InstanceResult(info=await self._run_instance(request, caller))
            except RpcError as err:
                return InstanceResult(status=err.status, code=err.code, message=err.message)

        return InstanceResults(results=list(await asyncio.gather(*(one(r) for r in batch.instances))))

    async def _terminate_instances(self, batch: TerminateInstancesRequest, caller: Caller) -> InstanceResults:
        """TerminateInstance for each id (together: each teardown waits on libvirt and the disk on its own)."""

        async def one(instance_id: str) -> InstanceResult:
            try:
                return InstanceResult(info=await self._manager.terminate(instance_id))
            except RpcError as err:
                return InstanceResult(status=err.status, code=err.code, message=err.message)

        return InstanceResults(results=list(await asyncio.gather(*(one(i) for i in batch.instance_ids))))

    async def _terminate_instance(self, request: InstanceIdRequest, caller: Caller) -> InstanceInfo:
        return await self._manager.terminate(request.instance_id)

    async def _describe_instances(self, request: DescribeInstancesRequest, caller: Caller) -> DescribeInstancesResponse:
        if len(request.instance_ids) > 10000:
            raise RpcError(400, "InvalidRequest", "too many instance ids")
        return DescribeInstancesResponse(instances=self._manager.describe(request.instance_ids))

    async def _describe_resource(self, _: Empty, caller: Caller) -> DescribeResourceResponse:
        manager = self._manager
        free, limits = manager.free(), manager.limits
        return DescribeResourceResponse(
            node_status="disabled" if self.powered_down else "enabled",
            memory_max_mb=limits["memory_mb"],
            memory_available_mb=max(0, free["memory_mb"]),
            disk_max_gb=limits["disk_gb"],
            disk_available_gb=max(0, free["disk_gb"]),
            cores_max=limits["cores"],
            cores_available=max(0, free["cores"]),
            instances=manager.held()["instances"],
            hypervisor=self.config.HYPERVISOR,
            unknown_domains=sorted(manager.unknown_domains),
            monitor_sweeps=manager.sweeps,
        )

    async def _reboot_instance(self, request: InstanceIdRequest, caller: Caller) -> InstanceInfo:
        return await self._manager.reboot(request.instance_id)

    async def _suspend_instance(self, request: InstanceIdRequest, caller: Caller) -> InstanceInfo:
        return await self._manager.suspend(request.instance_id)

    async def _resume_instance(self, request: InstanceIdRequest, caller: Caller) -> InstanceInfo:
        return await self._manager.resume(request.instance_id)

    async def _console_output(self, request: InstanceIdRequest, caller: Caller) -> ConsoleOutputResponse:
        data = await self._manager.console_output(request.instance_id)
        return ConsoleOutputResponse(instance_id=request.instance_id, output=base64.b64encode(data).decode())

    async def _start_network(self, request: StartNetworkRequest, caller: Caller) -> Ack:
        if self.node_network is None:  # libvirt's test driver: validate only, the host is never touched
            if request.bridge and not network.valid_bridge(request.bridge):
                raise RpcError(400, "NetworkError", f"invalid bridge name {request.bridge!r}")
            return Ack()
        if request.vlan >= 0 or request.bridge or self.config.VNET_BRIDGE:
            try:
                await self.node_network.ensure(request.vlan, request.bridge)
            except network.NetworkError as err:
                raise RpcError(400, "NetworkError", str(err)) from None
        return Ack()

    async def _attach_volume(self, request: NodeAttachRequest, caller: Caller) -> NodeAttachment:
        self._manager  # noqa: B018 - NotReady while starting
        assert self.volumes is not None
        return await self.volumes.attach(request)

    async def _detach_volume(self, request: NodeDetachRequest, caller: Caller) -> NodeAttachment:
        self._manager  # noqa: B018 - NotReady while starting
        assert self.volumes is not None
        return await self.volumes.detach(request)

    @property
    def _bundler(self) -> Bundler:
        self._manager  # noqa: B018 - NotReady while starting
        assert self.bundler is not None
        return self.bundler

    async def _bundle_instance(self, request: StartBundleRequest, caller: Caller) -> NodeBundleStatus:
        return await self._bundler.begin(request)

    async def _describe_bundle(self, request: BundleTaskRequest, caller: Caller) -> NodeBundleStatus:
        return self._bundler.describe(request.bundle_id)

    async def _cancel_bundle(self, request: BundleTaskRequest, caller: Caller) -> NodeBundleStatus:
        return await self._bundler.cancel(request.bundle_id)

    @property
    def _migrations(self) -> NodeMigrations:
        self._manager  # noqa: B018 - NotReady while starting
        assert self.migrations is not None
        return self.migrations

    async def _prepare_migration(self, request: PrepareMigrationRequest, caller: Caller) -> MigrationTarget:
        if self.powered_down:
            raise RpcError(503, "NodePoweredDown", "this node is powering down")
        if self.node_network is not None:  # the guest's bridge exists here before it arrives
            request = request.model_copy(update={"run": await network.prepare_run(self.node_network, request.run)})
        return await self._migrations.prepare(request)

    async def _mark_migration(self, request: InstanceIdRequest, caller: Caller) -> MigrationMarker:
        return await self._migrations.mark(request.instance_id)

    async def _migrate_instance(self, request: MigrateInstanceRequest, caller: Caller) -> MigrationStatus:
        return await self._migrations.migrate(request)

    async def _describe_migration(self, request: InstanceIdRequest, caller: Caller) -> MigrationStatus:
        return await self._migrations.describe_now(request.instance_id)

    async def _commit_migration(self, request: CommitMigrationRequest, caller: Caller) -> MigrationLanded:
        return await self._migrations.commit(request)

    async def _release_migration(self, request: ReleaseMigrationRequest, caller: Caller) -> InstanceInfo:
        return await self._migrations.release(request)

    async def _power_down(self, _: Empty, caller: Caller) -> Ack:
        """POWERSAVE: never with guests running. With KOALA_NC_POWEROFF_COMMAND the node then refuses new work
        and runs the command (Wake-on-LAN brings it back as a fresh start); without one the sleep is only the
        CC's view (simulated hosts), so the NC stays as it is and answers the CC's polls after a "wake"."""
        manager = self._manager
        if manager.held()["instances"]:
            raise RpcError(409, "NodeBusy", "instances are still running here")
        command = shlex.split(self.config.KOALA_NC_POWEROFF_COMMAND)
        if not command:
            log.info("PowerDown requested by %s: no KOALA_NC_POWEROFF_COMMAND, so the host stays up", caller.id)
            return Ack()
        self.powered_down = True
        log.warning("PowerDown requested by %s: running %s", caller.id, command[0])
        # After answering, so the CC gets its Ack.
        asyncio.get_running_loop().call_later(0.5, lambda: asyncio.ensure_future(_run_detached(command)))
        return Ack()


def _not_traversable(path: Path) -> str:
    """The first ancestor of `path` that others cannot search ('' when all can)."""
    for directory in [path, *path.parents]:
        try:
            if not directory.stat().st_mode & 0o001:
                return str(directory)
        except OSError:
            return str(directory)
    return ""


async def _run_detached(command: list[str]) -> None:
    try:
        result = await SubprocessRunner(timeout=300.0).run(command, check=False)
    except CommandFailed as err:
        log.error("%s", err)
        return
    if result.code:
        log.error("%s failed: %s", command[0], result.stderr.strip()[:500])
