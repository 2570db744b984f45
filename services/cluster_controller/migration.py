"""Live migration between the nodes of this zone, node maintenance (evacuate, restore), driven by the CC.

One migration, each state written before the call it names:

    preparing  -> MarkMigration on the source (a marker file in the instance's directory) and the instance's EBS
                  attachments extended to the target (its own initiator admitted: block storage's begin_move), then
                  PrepareMigration on the target (the instance's bridge first): its image cached, empty disks (none
                  when it finds the source's marker at its own path: shared storage), the volumes' disks ready
    migrating  -> MigrateInstance on the source, then DescribeMigration until libvirt is done
    finishing  -> the instance's node is the target from here on; CommitMigration on the target (with the source's
                  console history), the attachments follow it (the source's initiator no longer admitted),
                  ReleaseMigration(moved) on the source
    done
    aborting   -> (the source failed, or preparing was interrupted) ReleaseMigration(failed) on the target, the
                  attachments stay on the source (the target's initiator no longer admitted)
    failed        the guest runs on where it was

While it runs the instance is reserved on both nodes. A restarted CC resumes each unfinished migration from its
state (preparing is undone: nothing was sent to the source yet); the NCs' own records make every call idempotent.
The guest's network needs nothing from the CC but the bridge on the target: its MAC, addresses, DHCP entry,
security group rules and elastic IP all live with the CC and stay as they were.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from pydantic import BaseModel

from common.backoff import Backoff
from common.messages.cc_nc import BootVolume, RunInstanceRequest
from common.messages.migration import (
    CommitMigrationRequest,
    MigrateInstanceRequest,
    MigrateInstancesRequest,
    MigrateInstancesResponse,
    MigrationInfo,
    MigrationMode,
    NodeMaintenance,
    PrepareMigrationRequest,
    ReleaseMigrationRequest,
)
from common.messages.storage import NodeAttachRequest
from common.rpc import RpcError
from services.cluster_controller.model import Instance, Migration, Node
from services.cluster_controller.placement import NodeCapacity, NodeState

if TYPE_CHECKING:
    from services.cluster_controller.cluster import Cluster

log = logging.getLogger("koala.cc.migration")
M = TypeVar("M", bound=BaseModel)
POLL_SECONDS = 0.1  # the source's progress, read this often while libvirt copies
KEEP_FINISHED = 200  # finished migrations kept for DescribeMigrations


class VolumeMoves(Protocol):
    """Block storage's part: the instance's EBS attachments extended to the target, then settled on one node."""

    async def begin_move(self, instance_id: str, node_url: str) -> list[NodeAttachRequest]: ...

    async def end_move(self, instance_id: str, node_url: str, moved: bool) -> None: ...


class Migrations:
    """The CC's migrations and node maintenance; `cluster` is the engine whose nodes and instances they move."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.by_instance: dict[str, Migration] = {}
        self.maintenance: dict[str, float] = {}  # node url -> since
        # Other parts' reasons an instance may not move now ('' when it may), e.g. block storage's.
        self.refusals: list[Callable[[str], str]] = []
        self.volumes: VolumeMoves | None = None  # set by the storage package: attachments follow the guest

    # --- persistence --------------------------------------------------------------------------------------------
    async def _save(self, migration: Migration, instances: Sequence[Instance] = ()) -> None:
        """The migration's state (and, in the same transaction, instances whose node it changed)."""
        migration.updated_at = time.time()
        await self.cluster.store.save_migration(migration, instances)

    async def start(self) -> None:
        """After the cluster loaded its nodes and instances: maintenance marks, and unfinished migrations resumed."""
        for url, since in (await self.cluster.store.load_maintenance()).items():
            self.maintenance[url] = since
            node = self.cluster.nodes.get(url)
            if node is not None:
                node.maintenance = True
                node.touch()
        for migration in await self.cluster.store.load_migrations():
            self.by_instance[migration.instance_id] = migration
            if not migration.active:
                continue
            instance = self.cluster.instances.get(migration.instance_id)
            if instance is None:
                continue
            other = migration.source_url if instance.node_url == migration.target_url else migration.target_url
            node = self.cluster.nodes.get(other)
            if node is not None and instance.live:
                node.reserve(instance)  # held on both nodes until it is settled
            if migration.state == "preparing":
                migration.state, migration.error = "aborting", "the CC restarted while preparing"
                await self._save(migration)
            log.info("%s: resuming migration %s -> %s (%s)", migration.instance_id, migration.source_url,
                     migration.target_url, migration.state)  # fmt: skip
            self._drive(migration)
        self.cluster.on_end.append(self._instance_ended)

    # --- queries --------------------------------------------------------------------------------------------
    def active_for(self, instance_id: str) -> Migration | None:
        migration = self.by_instance.get(instance_id)
        return migration if migration is not None and migration.active else None

    def info(self, migration: Migration) -> MigrationInfo:
        return MigrationInfo(
            instance_id=migration.instance_id,
            source_node=self._node_name(migration.source_url),
            target_node=self._node_name(migration.target_url),
            mode=migration.mode,
            state=migration.state,
            error=migration.error,
            progress=migration.progress,
            elapsed_ms=migration.elapsed_ms,
            downtime_ms=migration.downtime_ms,
            started_at=migration.started_at,
            updated_at=migration.updated_at,
        )

    def describe(self, instance_ids: list[str]) -> list[MigrationInfo]:
        wanted = {i.lower() for i in instance_ids}
        return [self.info(m) for m in self.by_instance.values() if not wanted or m.instance_id in wanted]

    def _node_name(self, url: str) -> str:
        node = self.cluster.nodes.get(url)
        return (node.node_id if node else "") or url

    def find_node(self, name: str) -> Node | None:
        for node in self.cluster.nodes.values():
            if name in (node.url, node.node_id):
                return node
        return None

    # --- starting migrations ----------------------------------------------------------------------------------
    async def migrate(self, request: MigrateInstancesRequest) -> MigrateInstancesResponse:
        answer = MigrateInstancesResponse()
        target = None
        if request.target_node:
            target = self.find_node(request.target_node)
            if target is None:
                raise RpcError(404, "NodeNotFound", f"no node {request.target_node!r} in this zone")
        for instance_id in request.instance_ids:
            try:
                migration = await self.begin(instance_id.lower(), target, request.mode)
            except RpcError as err:
                answer.errors[instance_id] = f"{err.code}: {err.message}"
                continue
            answer.migrations.append(self.info(migration))
        return answer

    async def begin(self, instance_id: str, target: Node | None, mode: MigrationMode = "live") -> Migration:
        """Check, pick the target (the placement policy's choice unless given), reserve there, write `preparing`."""
        cluster = self.cluster
        instance = cluster.instances.get(instance_id)
        if instance is None or not instance.live:
            raise RpcError(404, "InvalidInstanceID.NotFound", f"no running instance {instance_id} in this zone")
        if self.active_for(instance_id) is not None:
            raise RpcError(409, "MigrationInProgress", f"{instance_id} is being migrated already")
        if instance.state != "Extant" or instance.confirmed_at is None or instance.terminating:
            raise RpcError(409, "IncorrectInstanceState", f"{instance_id} is {instance.state}/{instance.detail}")
        if instance.parked:
            raise RpcError(409, "IncorrectInstanceState", f"{instance_id} is suspended")
        for refusal in self.refusals:
            why = refusal(instance_id)
            if why:
                raise RpcError(409, "MigrationRefused", f"{instance_id} cannot be migrated: {why}")
        if target is not None and target.maintenance:
            raise RpcError(409, "NodeInMaintenance", f"node {target.node_id or target.url} is being evacuated")
        source = cluster.nodes.get(instance.node_url)
        if source is None or source.state is not NodeState.UP:
            raise RpcError(409, "NodeUnavailable", f"the node of {instance_id} does not answer now")
        async with cluster.lock:
            order, capacities = cluster.snapshot()
            snapshot = list(capacities)
            for index, node in enumerate(order):
                if node is source or node.state is not NodeState.UP or (target is not None and node is not target):
                    snapshot[index] = NodeCapacity(node.url, NodeState.DOWN, 0, 0, 0)
            plan = cluster.policy(snapshot, instance.need, 1, cluster.cursor)
            if not plan.picks:
                where = f"node {target.node_id or target.url}" if target is not None else "no other node"
                if target is source:
                    raise RpcError(400, "InvalidParameterValue", f"{instance_id} runs on {where} already")
                raise RpcError(409, "InsufficientInstanceCapacity", f"{where} has no room for {instance_id} now")
            chosen = order[plan.picks[0]]
            now = time.time()
            migration = Migration(instance_id, source.url, chosen.url, mode, "preparing", started_at=now)
            migration.marks["preparing"] = time.monotonic()
            chosen.reserve(instance)
            try:
                await self._save(migration)
            except Exception:
                chosen.release(instance)
                raise
            self.by_instance[instance_id] = migration
        log.info("%s: migration %s -> %s (%s)", instance_id, source.node_id or source.url,
                 chosen.node_id or chosen.url, mode)  # fmt: skip
        self._drive(migration)
        return migration

    def _drive(self, migration: Migration) -> None:
        migration.task = self.cluster.spawn(self._run(migration), f"migrate {migration.instance_id}")

    # --- the driver -------------------------------------------------------------------------------------------
    async def _run(self, migration: Migration) -> None:
        cluster = self.cluster
        instance = cluster.instances.get(migration.instance_id)
        if instance is None:
            return
        try:
            if migration.state == "preparing":
                await self._prepare(migration, instance)
            if migration.state == "migrating":
                await self._send(migration, instance)
            if migration.state == "finishing":
                await self._finish(migration, instance)
            if migration.state == "aborting":
                await self._abort(migration, instance)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: migration driver failed in state %s", migration.instance_id, migration.state)
            raise

    async def _set(self, migration: Migration, state: str, error: str = "", instances: Sequence[Instance] = ()) -> None:
        migration.state = state
        migration.marks[state] = time.monotonic()
        if error:
            migration.error = error
        await self._save(migration, instances)

    async def _prepare(self, migration: Migration, instance: Instance) -> None:
        cluster = self.cluster
        target = cluster.nodes.get(migration.target_url)
        request = await cluster.run_request(instance)
        if target is None or request is None:
            await self._set(migration, "failed", "the target node or the launch specification is gone")
            self._release_target(migration, instance)
            return
        source = cluster.nodes.get(migration.source_url)
        try:
            await cluster.start_network(target, instance)
            marker = await self._mark(migration)
            volumes = await self._volumes(migration, instance, request)
            prepare = PrepareMigrationRequest(run=request, source_node=source.node_id if source else "",
                                              volumes=volumes, marker=marker)  # fmt: skip
            prepared = await cluster.nc.prepare_migration(target.url, prepare)
        except RpcError as err:
            await self._set(migration, "aborting", f"prepare on {self._node_name(target.url)}: {err}")
            return
        migration.target = prepared
        await self._set(migration, "migrating")

    async def _mark(self, migration: Migration) -> str:
        """The source's marker in the instance's directory ('' when it wrote none: then the disks are copied)."""
        try:
            answer = await self.cluster.nc.mark_migration(migration.source_url, migration.instance_id)
        except RpcError as err:
            log.warning("%s: no marker from the source (its disks will be copied): %s", migration.instance_id, err)
            return ""
        return answer.marker

    async def _volumes(
        self, migration: Migration, instance: Instance, request: RunInstanceRequest
    ) -> list[NodeAttachRequest]:
        """The instance's volumes extended to the target: those it boots with into `request.volumes` (as a start
        would send them), the others returned (hot-plugged ones)."""
        if self.volumes is None:
            return []
        moving = await self.volumes.begin_move(instance.instance_id, migration.target_url)
        spec = await self.cluster.store.reservations.spec(instance.reservation_id)
        boot = {v.volume_id: v for v in (spec.boot_volumes.get(instance.instance_id, []) if spec else [])}
        in_boot = [v for v in moving if v.volume_id in boot]
        request.volumes = [BootVolume(**boot[v.volume_id].model_dump(), target=v.target, rbd=v.rbd) for v in in_boot]
        return [v for v in moving if v.volume_id not in boot]

    async def _settle_volumes(self, migration: Migration, moved: bool) -> None:
        if self.volumes is not None:
            await self.volumes.end_move(migration.instance_id, migration.target_url, moved)

    async def _send(self, migration: Migration, instance: Instance) -> None:
        assert migration.target is not None
        request = MigrateInstanceRequest(instance_id=instance.instance_id, target=migration.target, mode=migration.mode)
        backoff = Backoff(0.5, 5.0)
        sent = False
        while True:
            try:
                if not sent:
                    status = await self.cluster.nc.migrate_instance(migration.source_url, request)
                    sent = True
                else:
                    status = await self.cluster.nc.describe_migration(migration.source_url, instance.instance_id)
            except RpcError as err:
                if err.status < 500 and not sent:
                    await self._set(migration, "aborting", f"the source refused: {err}")
                    return
                log.warning("%s: source %s: %s (retrying)", instance.instance_id, migration.source_url, err)
                await backoff.wait()
                continue
            backoff.reset()
            if status.data_total:
                migration.progress = min(100, int(100 * status.data_processed / max(1, status.data_total)))
            migration.elapsed_ms, migration.downtime_ms = status.elapsed_ms, status.downtime_ms
            if status.state == "running":
                await asyncio.sleep(POLL_SECONDS)
                continue
            if status.state == "completed":
                migration.progress = 100
                await self._switch(migration, instance)
                return
            if status.state == "gone" and await self._target_runs_it(migration, instance):
                await self._switch(migration, instance)
                return
            if status.state == "none":
                # The source has no record: MigrateInstance never reached it (or was lost with it); send it again.
                sent = False
                continue
            await self._set(migration, "aborting", status.error or f"the source reports {status.state}")
            return

    async def _target_runs_it(self, migration: Migration, instance: Instance) -> bool:
        """The source lost track (it restarted, or libvirt's answer was lost): does the target run the guest?"""
        try:
            await self._commit(migration, instance)
        except RpcError as err:
            log.warning("%s: the target does not run it either: %s", instance.instance_id, err)
            return False
        return True

    async def _switch(self, migration: Migration, instance: Instance) -> None:
        """From here the instance is the target's: written, in one transaction with the migration's state."""
        instance.node_url = migration.target_url
        instance.detail = "running"
        await self._set(migration, "finishing", instances=[instance])
        self.cluster.changed(instance)

    async def _commit(self, migration: Migration, instance: Instance) -> None:
        output = ""
        try:  # the console so far, kept by the target before its own lines (one log already when it is shared)
            if migration.target is None or not migration.target.shared:
                output = await self.cluster.nc.console_output(migration.source_url, instance.instance_id)
        except RpcError as err:
            log.warning("%s: no console history from the source: %s", instance.instance_id, err)
        committed = await self.cluster.nc.commit_migration(
            migration.target_url, CommitMigrationRequest(instance_id=instance.instance_id, console=output)
        )
        instance.detail = committed.detail or instance.detail
        if committed.elapsed_ms:  # libvirt's own figures, as the target read them
            migration.elapsed_ms, migration.downtime_ms = committed.elapsed_ms, committed.downtime_ms

    async def _finish(self, migration: Migration, instance: Instance) -> None:
        backoff = Backoff(0.5, 10.0)
        committed = False
        while not committed:
            try:
                await self._commit(migration, instance)
                committed = True
            except RpcError as err:
                if err.status >= 500:  # the target NC is away (killed, restarting): its record waits for us
                    log.warning("%s: commit on the target: %s (retrying)", instance.instance_id, err)
                    await backoff.wait()
                    continue
                # No running guest on the target although the source let it go: it is lost.
                await self._set(migration, "failed", f"the guest did not arrive: {err}")
                await self._settle_volumes(migration, moved=False)
                self.cluster.end(instance, f"lost in migration: {err.message}")
                return
        await self._settle_volumes(migration, moved=True)
        await self._release(migration.source_url, instance, "moved", migration)
        source = self.cluster.nodes.get(migration.source_url)
        if source is not None:
            source.release(instance, ended=True)
        await self._set(migration, "done")
        self.cluster.changed(instance)
        log.info("%s: now on %s (%s)", instance.instance_id, self._node_name(migration.target_url), _phases(migration))
        self._trim()
        if instance.terminating:
            self.cluster.spawn(self.cluster.terminate_one(instance), f"terminate {instance.instance_id}")

    async def _abort(self, migration: Migration, instance: Instance) -> None:
        log.warning("%s: migration to %s failed: %s", instance.instance_id, self._node_name(migration.target_url),
                    migration.error)  # fmt: skip
        await self._release(migration.target_url, instance, "failed", migration)
        await self._settle_volumes(migration, moved=False)
        self._release_target(migration, instance)
        await self._set(migration, "failed")
        self._trim()
        if instance.terminating:
            self.cluster.spawn(self.cluster.terminate_one(instance), f"terminate {instance.instance_id}")

    def _release_target(self, migration: Migration, instance: Instance) -> None:
        node = self.cluster.nodes.get(migration.target_url)
        if node is not None and instance.node_url != node.url:
            node.release(instance, ended=True)

    async def _release(self, url: str, instance: Instance, outcome: str, migration: Migration) -> None:
        """ReleaseMigration until the node has done it (or does not know the instance: nothing to release)."""
        request = ReleaseMigrationRequest(
            instance_id=instance.instance_id, outcome=outcome, target_node=self._node_name(migration.target_url)
        )
        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                await self.cluster.nc.release_migration(url, request)
                return
            except RpcError as err:
                if err.status == 404:
                    return
                log.warning("%s: ReleaseMigration(%s) on %s: %s (retrying)", instance.instance_id, outcome, url, err)
            await backoff.wait()

    def _trim(self) -> None:
        finished = [m for m in self.by_instance.values() if not m.active]
        for migration in sorted(finished, key=lambda m: m.updated_at)[: max(0, len(finished) - KEEP_FINISHED)]:
            del self.by_instance[migration.instance_id]

    async def _instance_ended(self, instance_id: str) -> None:
        """An instance ended (terminated, lost) while a migration held it on a second node: give that back."""
        migration = self.active_for(instance_id)
        instance = self.cluster.instances.get(instance_id)
        if migration is None or instance is None:
            return
        for url in (migration.source_url, migration.target_url):
            node = self.cluster.nodes.get(url)
            if node is not None:
                node.release(instance, ended=True)

    # --- maintenance --------------------------------------------------------------------------------------------
    async def evacuate(self, name: str) -> NodeMaintenance:
        """Stop placing on the node and move every instance off it (live), each where the policy puts it."""
        node = self.find_node(name)
        if node is None:
            raise RpcError(404, "NodeNotFound", f"no node {name!r} in this zone")
        if node.url not in self.maintenance:
            now = time.time()
            await self.cluster.store.set_maintenance(node.url, now)
            self.maintenance[node.url] = now
            node.maintenance = True
            node.touch()
            log.info("node %s: maintenance, evacuating %d instances", node.node_id or node.url, len(node.instances))
        errors: dict[str, str] = {}
        for instance in list(node.instances.values()):
            if instance.node_url != node.url or self.active_for(instance.instance_id) is not None:
                continue
            try:
                await self.begin(instance.instance_id, None)
            except RpcError as err:
                errors[instance.instance_id] = f"{err.code}: {err.message}"
        return self.maintenance_info(node, errors)

    async def restore(self, name: str) -> NodeMaintenance:
        node = self.find_node(name)
        if node is None:
            raise RpcError(404, "NodeNotFound", f"no node {name!r} in this zone")
        await self.cluster.store.clear_maintenance(node.url)
        self.maintenance.pop(node.url, None)
        node.maintenance = False
        node.touch()
        log.info("node %s: back in service", node.node_id or node.url)
        return self.maintenance_info(node)

    def maintenance_info(self, node: Node, errors: dict[str, str] | None = None) -> NodeMaintenance:
        moving = [self.info(m) for m in self.by_instance.values() if m.active and m.source_url == node.url]
        if node.url not in self.maintenance:
            state = "enabled"
        else:
            left = [i for i in node.instances.values() if i.node_url == node.url]
            state = "evacuating" if left or moving else "evacuated"
        return NodeMaintenance(node=node.node_id or node.url, state=state, migrations=moving, errors=errors or {})


def _phases(migration: Migration) -> str:
    """How long each state lasted, e.g. 'preparing 0.8 s, migrating 3.1 s, finishing 0.4 s' (this process's part)."""
    marks = sorted(migration.marks.items(), key=lambda item: item[1])
    spans = [f"{a} {tb - ta:.2f} s" for (a, ta), (_, tb) in itertools.pairwise(marks)]
    return ", ".join(spans) or "resumed"
