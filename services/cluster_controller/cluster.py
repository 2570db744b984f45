"""The cluster engine: node registry and health, placement with accounting, fan-out to the NCs, and
reconciliation of what the NCs report with what the CC placed.

Control is level-triggered: every poll of a node compares what it runs with what the CC placed there and
acts (terminates strays, ends instances the node lost, re-sends terminations) until they match, so a lost
message, a node blip or a restart heals by itself. Placement decisions are written to the database before
any node hears of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, cast

from common.hostcmd import SubprocessRunner
from common.ids import is_id
from common.messages import bundle_tasks, cc_nc
from common.messages.cc_nc import InstanceInfo, LaunchSpec, LaunchVolume, NetConfig, VmType
from common.messages.clc_cc import (
    ClusterInstance,
    ClusterState,
    DescribeNodesResponse,
    DescribeResourcesResponse,
    InstancePlacement,
    NodeInfo,
    ResourceAvailability,
    RunInstancesRequest,
    RunInstancesResponse,
    SuspendInstancesResponse,
)
from common.rpc import PeerUnreachable, RpcClient, RpcError
from common.tasks import TaskSet
from services.cluster_controller import placement
from services.cluster_controller.config import ClusterControllerConfig, node_url
from services.cluster_controller.consolidation import Consolidation
from services.cluster_controller.health import NodeHealth
from services.cluster_controller.migration import Migrations
from services.cluster_controller.model import Instance, Node
from services.cluster_controller.nc_client import BundleOperation, NcClient
from services.cluster_controller.notifier import Notifier
from services.cluster_controller.placement import Need, NodeCapacity, NodeState, Plan, slots
from services.cluster_controller.power import WakeError, normalize_mac
from services.cluster_controller.powersave import PowerSave
from services.cluster_controller.reservations import purge_ended
from services.cluster_controller.store import Store

log = logging.getLogger("koala.cc")
# RunInstance calls sent again to a node whose answer did not come (timeout, broken connection) before the instance
# is placed elsewhere: the node may have it.
IN_DOUBT_RESENDS = 3
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


# Exports an instance's boot volumes to its node: (instance id, node URL, volumes) -> their iSCSI targets.
BootVolumes = Callable[[str, str, list[LaunchVolume]], Coroutine[Any, Any, list[cc_nc.BootVolume]]]


class Cluster:
    """The zone's instances and nodes; node health (health.py) and power saving (powersave.py) are its
    collaborators, built here with what each of them uses."""

    def __init__(self, config: ClusterControllerConfig, client: RpcClient, store: Store):
        self.config, self.client, self.store = config, client, store
        self.nc = NcClient(client, config.KOALA_NC_TIMEOUT, config.KOALA_RUN_TIMEOUT)
        self.zone = config.KOALA_ZONE
        self.policy_name = config.SCHEDPOLICY
        self.policy = placement.policy(config.SCHEDPOLICY)
        self.cursor = 0
        self.nodes: dict[str, Node] = {}  # by URL, in NODES order then registration order
        self.instances: dict[str, Instance] = {}
        self.lock = asyncio.Lock()  # placement and failover: one snapshot at a time
        self.notifier = Notifier(client, config.KOALA_CLC_URL, self.zone)
        self._tasks = TaskSet(log)
        self._dirty: dict[str, Instance] = {}
        self._dirty_event = asyncio.Event()
        self._networks: set[tuple[str, int, str]] = set()
        self.boot_volumes: BootVolumes | None = None  # set by the storage package
        # Called with an instance id when the instance ends, e.g. to give back its network entries at once.
        self.on_end: list[Callable[[str], Coroutine[Any, Any, None]]] = []
        # Placement's snapshot, kept up to date node by node: rebuilding 10,000 entries per decision would
        # cost more than the decision itself.
        self._order: list[Node] | None = None
        self._snapshot: list[NodeCapacity] = []
        self._position: dict[str, int] = {}
        self._stale: set[str] = set()
        self.health = NodeHealth(
            config,
            self.nc,
            store,
            self.notifier,
            self.nodes,
            self.instances,
            self._tasks,
            changed=self.changed,
            ended=self.end,
            terminate=self.terminate_one,
            moving=self._moving,
        )
        self.power = PowerSave(config, self.nc, store, self.nodes, self.lock, self._tasks, SubprocessRunner())
        self.migrations = Migrations(self)

    # --- lifecycle ------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Rebuild nodes and instances from the database and NODES, then start polling; nothing running is
        touched: the first polls reconcile."""
        stored = {node.url: node for node in await self.store.load_nodes()}
        configured = self.config.node_urls()
        for url in configured:
            node = stored.pop(url, None) or Node(url=url, source="config")
            node.source = "config"
            self._add_node(node)
        for node in stored.values():  # registered ones, and configured ones removed from NODES
            self._add_node(node)
        instances = await self.store.load_instances()
        for instance in instances:
            self.instances[instance.instance_id] = instance
            if not instance.live:
                continue
            known = self.nodes.get(instance.node_url)
            # Its node left the configuration: keep it known until its instances end.
            node = known if known is not None else self._add_node(Node(url=instance.node_url, source="registered"))
            node.reserve(instance)
        for url, node in list(self.nodes.items()):
            if node.source == "config" and url not in configured and not node.instances:
                del self.nodes[url]
                self._order = None
                await self.store.delete_node(url)
            else:
                await self.store.save_node(node)
        log.info(
            "%d nodes (%s), %d live instances, policy %s",
            len(self.nodes),
            ", ".join(self.nodes),
            sum(1 for i in instances if i.live),
            self.policy_name,
        )
        await self.migrations.start()  # before the first polls: a migration's two copies are not strays
        for node in self.nodes.values():
            self.health.watch(node)
        self.notifier.start()
        self.spawn(self._flush_loop(), "cc db writer")
        self.spawn(
            purge_ended(self.instances, self.config.KOALA_TEARDOWN_RETENTION, self.store.reservations), "cc purge"
        )
        if self.policy_name == "POWERSAVE":
            self.spawn(self.power.run(), "cc powersave")
            if self.config.KOALA_CONSOLIDATE:
                self.spawn(Consolidation(self).run(), "cc consolidation")
        for instance in instances:
            if instance.live and instance.confirmed_at is None:
                self.spawn(self._dispatch(instance, recover=True), f"redispatch {instance.instance_id}")
            elif instance.live and instance.terminating:
                self.spawn(self.terminate_one(instance), f"terminate {instance.instance_id}")

    async def stop(self) -> None:
        tasks = [*self.health.watchers(), *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.notifier.stop()
        await self._flush()

    def _moving(self, instance_id: str, node_url: str = "") -> bool:
        migration = self.migrations.active_for(instance_id)
        return migration is not None and (not node_url or node_url in (migration.source_url, migration.target_url))

    def _add_node(self, node: Node) -> Node:
        node.gate = asyncio.Semaphore(self.config.KOALA_NC_CONCURRENCY)
        node.stale = self._stale
        self.nodes[node.url] = node
        self._order = None
        return node

    def snapshot(self) -> tuple[list[Node], list[NodeCapacity]]:
        """The nodes in order and what placement sees of each, recomputing only the nodes that changed."""
        if self._order is None:
            self._order = list(self.nodes.values())
            self._snapshot = [n.capacity() for n in self._order]
            self._position = {n.url: i for i, n in enumerate(self._order)}
        else:
            for url in self._stale:
                index = self._position.get(url)
                if index is not None:
                    self._snapshot[index] = self._order[index].capacity()
        self._stale.clear()
        return self._order, self._snapshot

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        return self._tasks.spawn(coro, name)

    # --- reporting and persistence -----------------------------------------------------------------------
    def changed(self, instance: Instance) -> None:
        """An observed change: saved shortly (batched) and pushed to the CLC at once."""
        self._dirty[instance.instance_id] = instance
        self._dirty_event.set()
        self.notifier.changed(instance.report(self.nodes.get(instance.node_url)))

    async def _flush(self) -> None:
        if self._dirty:
            batch, self._dirty = list(self._dirty.values()), {}
            await self.store.save_instances(batch)

    async def _flush_loop(self) -> None:
        while True:
            await self._dirty_event.wait()
            self._dirty_event.clear()
            await asyncio.sleep(0.05)  # let a burst of changes share one transaction
            batch = dict(self._dirty)
            try:
                await self._flush()
            except Exception:
                log.exception("cannot save %d instance states; retrying", len(batch))
                for instance_id, instance in batch.items():
                    self._dirty.setdefault(instance_id, instance)
                self._dirty_event.set()
                await asyncio.sleep(1.0)

    def end(self, instance: Instance, reason: str, detail: str = "") -> None:
        """The instance is over (terminated, failed or lost): release its capacity and report Teardown."""
        node = self.nodes.get(instance.node_url)
        if node is not None:
            node.release(instance, ended=True)
        if instance.state != "Teardown":
            log.info("%s on %s: Teardown (%s)", instance.instance_id, instance.node_url, reason)
            for listener in self.on_end:
                self.spawn(listener(instance.instance_id), f"end {instance.instance_id}")
        instance.state, instance.reason = "Teardown", reason
        if detail:
            instance.detail = detail
        instance.ended_at = time.time()
        self.changed(instance)

    # --- queries --------------------------------------------------------------------------------------
    def describe_instances(self, ids: Iterable[str]) -> list[ClusterInstance]:
        wanted = [i.lower() for i in ids]
        chosen = [self.instances[i] for i in wanted if i in self.instances] if wanted else self.instances.values()
        return [instance.report(self.nodes.get(instance.node_url)) for instance in chosen]

    def live_nets(self) -> dict[str, NetConfig]:
        """The network of each live instance (the network manager's desired DHCP entries and addresses)."""
        return {i.instance_id: i.net for i in self.instances.values() if i.live}

    def node_of(self, instance_id: str) -> tuple[str, str] | None:
        """The node URL and node id of a running instance (not in flight, not terminating), else None."""
        instance = self.instances.get(instance_id)
        if instance is None or not instance.live or instance.terminating or instance.confirmed_at is None:
            return None
        node = self.nodes.get(instance.node_url)
        return instance.node_url, (node.node_id if node else "")

    def instance_live(self, instance_id: str) -> bool:
        """Whether the instance has a live run here (placed, perhaps not yet confirmed by its node)."""
        instance = self.instances.get(instance_id)
        return instance is not None and instance.live and not instance.terminating

    def describe_resources(self, vm_types: list[VmType]) -> DescribeResourcesResponse:
        """Per VM type, as the reference: the sum over nodes of floor(min(free mem/mem, free disk/disk, free
        cores/cores)) for `available` and the same over the maximums for `max`. DOWN nodes count nothing;
        sleeping ones count (they are woken when chosen)."""
        counted = [n for n in self.nodes.values() if n.state is not NodeState.DOWN and n.enabled]
        frees = [(n, n.free()) for n in counted]
        resources = []
        for vm in vm_types:
            need = Need(vm.cores, vm.memory_mb, vm.disk_gb)
            available = sum(slots(NodeCapacity(n.url, n.state, m, d, c), need) for n, (m, d, c) in frees)
            maximum = sum(
                slots(NodeCapacity(n.url, n.state, n.memory_max_mb, n.disk_max_gb, n.cores_max), need) for n in counted
            )
            resources.append(ResourceAvailability(vm_type=vm.name, available=available, max=maximum))
        return DescribeResourcesResponse(
            zone=self.zone,
            resources=resources,
            nodes_up=sum(1 for n in self.nodes.values() if n.state is NodeState.UP),
            nodes_total=len(self.nodes),
        )

    def describe_nodes(self) -> DescribeNodesResponse:
        return DescribeNodesResponse(
            zone=self.zone, policy=self.policy_name, nodes=[n.info() for n in self.nodes.values()]
        )

    # --- placement ------------------------------------------------------------------------------------
    async def run_instances(self, request: RunInstancesRequest) -> RunInstancesResponse:
        ids = [launch.instance_id.lower() for launch in request.instances]
        bad = next((i for i in ids if not is_id(i, "i")), None)
        if bad is not None:
            raise RpcError(400, "InvalidInstanceID.Malformed", f"{bad[:40]!r} is not an instance id")
        if not is_id(request.reservation_id, "r"):
            raise RpcError(400, "InvalidRequest", f"{request.reservation_id[:40]!r} is not a reservation id")
        if len(set(ids)) != len(ids):
            raise RpcError(400, "InvalidRequest", "an instance id appears twice in the request")
        if request.min_count > len(ids):
            raise RpcError(400, "InvalidRequest", f"min_count {request.min_count} exceeds {len(ids)} instances")
        vm = request.vm_type
        need = Need(vm.cores, vm.memory_mb, vm.disk_gb)
        spec = LaunchSpec.of(request)  # with the instances' boot volumes, if any (EBS-backed launches)
        async with self.lock:  # the check under the lock: two copies of one request arriving together start once
            known = [self.instances[i] for i in ids if i in self.instances]
            # An instance whose run ended may run again under a new reservation (StartInstances of a stopped one).
            known = [i for i in known if i.live or i.reservation_id == request.reservation_id]
            if known:
                if any(i.reservation_id != request.reservation_id for i in known):
                    raise RpcError(
                        409, "InvalidInstanceID.Duplicate", f"instance {known[0].instance_id} already exists"
                    )
                # The CLC sent the same request again (a retry, a new leader): answer what was decided the first time.
                return RunInstancesResponse(instances=[self._placement(i) for i in ids])
            order, capacities = self.snapshot()
            plan = self._hinted(request, order, capacities, need) or self.policy(
                capacities, need, len(ids), self.cursor
            )
            placed = len(plan.picks)
            if placed < request.min_count:
                reason = (
                    f"InsufficientInstanceCapacity: {placed} of {len(ids)} instances of type {vm.name} fit in "
                    f"zone {self.zone}, at least {request.min_count} were asked for; none was started"
                )
                log.warning("reservation %s: %s", request.reservation_id, reason)
                return RunInstancesResponse(instances=[InstancePlacement(instance_id=i, error=reason) for i in ids])
            self.cursor = plan.cursor
            chosen: list[Instance] = []
            for launch, index in zip(request.instances, plan.picks, strict=False):
                instance = Instance(
                    instance_id=launch.instance_id.lower(),
                    reservation_id=request.reservation_id,
                    owner_id=request.owner_id,
                    node_url=order[index].url,
                    vm=vm,
                    launch_index=launch.launch_index,
                    net=launch.net,
                )
                order[index].reserve(instance)
                self.instances[instance.instance_id] = instance
                chosen.append(instance)
            try:
                await self.store.add_reservation(request.reservation_id, spec, chosen)
            except Exception:
                for instance in chosen:
                    self.nodes[instance.node_url].release(instance)
                    del self.instances[instance.instance_id]
                raise
            for index in plan.wake:
                self.power.wake(order[index])
        log.info(
            "reservation %s: %d of %d instances of %s placed (%s)",
            request.reservation_id,
            placed,
            len(ids),
            vm.name,
            self.policy_name,
        )
        answers = []
        for instance in chosen:
            self.notifier.changed(instance.report(self.nodes[instance.node_url]))
            self.spawn(self._dispatch(instance), f"dispatch {instance.instance_id}")
            answers.append(InstancePlacement(instance_id=instance.instance_id, node_id=self._node_id(instance)))
        no_room = f"InsufficientInstanceCapacity: no node in zone {self.zone} has room for another {vm.name}"
        answers += [InstancePlacement(instance_id=i, error=no_room) for i in ids[placed:]]
        return RunInstancesResponse(instances=answers)

    @staticmethod
    def _hinted(
        request: RunInstancesRequest, order: list[Node], capacities: list[NodeCapacity], need: Need
    ) -> Plan | None:
        """The CLC's own mapping (InstanceLaunch.node_id), when every instance has one and all fit there."""
        if not all(launch.node_id for launch in request.instances):
            return None
        index = {node.node_id or node.url: i for i, node in enumerate(order)}
        left = {i: slots(capacities[i], need) for i in set(index.values()) if capacities[i].state is not NodeState.DOWN}
        picks = []
        for launch in request.instances:
            i = index.get(launch.node_id)
            if i is None or left.get(i, 0) < 1:
                return None
            left[i] -= 1
            picks.append(i)
        return Plan(picks, 0, sorted({i for i in picks if capacities[i].state is NodeState.ASLEEP}))

    def _placement(self, instance_id: str) -> InstancePlacement:
        instance = self.instances.get(instance_id)
        if instance is None:
            return InstancePlacement(instance_id=instance_id, error="InsufficientInstanceCapacity: it was not placed")
        failed = instance.reason if instance.reason.startswith("failed") else ""
        return InstancePlacement(instance_id=instance_id, node_id=self._node_id(instance), error=failed)

    def _touch(self, instance: Instance) -> None:
        node = self.nodes.get(instance.node_url)
        if node is not None:
            node.touch()

    def _node_id(self, instance: Instance) -> str:
        node = self.nodes.get(instance.node_url)
        return (node.node_id if node else "") or instance.node_url

    # --- fan-out: RunInstance with failover ------------------------------------------------------------
    async def _dispatch(self, instance: Instance, recover: bool = False) -> None:
        while True:
            if not instance.live:
                return
            if instance.terminating:
                self.end(instance, "terminated before it started")
                return
            node = self.nodes[instance.node_url]
            error = await self._run_on(node, instance, recover)
            if error is None:
                if instance.terminating:
                    await self.terminate_one(instance)
                return
            if instance.terminating:
                self.end(instance, "terminated before it started")
                return
            if not await self._fail_over(instance, node, error):
                return
            recover = False

    async def _run_on(self, node: Node, instance: Instance, recover: bool) -> str | None:
        """Send the instance to its node; None on success, else why not."""
        away = await self._wait_up(node, min(self.config.KOALA_RUN_TIMEOUT, 2 * self.config.NC_POLLING_FREQUENCY + 5))
        if away is not None:
            return away
        if recover:  # sent before a restart? the node may have it already
            with contextlib.suppress(RpcError):
                for info in await self.nc.describe_instances(node.url, [instance.instance_id]):
                    if info.instance_id == instance.instance_id and info.state != "Teardown":
                        self._confirm(instance, info.state, info.detail)
                        return None
        request = await self.run_request(instance)
        if request is None:
            return "its launch specification was lost"
        error = await self._export_volumes(instance, node, request)
        if error is not None:
            return error
        assert node.gate is not None
        for resend in range(IN_DOUBT_RESENDS + 1):
            async with node.gate:
                try:
                    await self.start_network(node, instance)
                    started = await self.nc.run_instance(node.url, request)
                    break
                except PeerUnreachable as err:
                    error = f"node {node.node_id or node.url} failed RunInstance: {err.code}: {err.message}"
                except RpcError as err:
                    return f"node {node.node_id or node.url} failed RunInstance: {err.code}: {err.message}"
            # In doubt: the call may have reached the node, which may run the instance (an overloaded node answers
            # after the timeout). Placed elsewhere now, it would run twice for a moment, and the node would still
            # use the cores the CC gave back here (the next launch found it full: 'free: 0 cores'). So the node's
            # own word settles it (a push or poll listing it confirms it), else the same call is sent again once
            # the node answers polls (a node answers a run it has already with its state).
            if instance.confirmed_at is not None:
                return None
            if resend == IN_DOUBT_RESENDS or instance.terminating:
                return error
            log.info("%s: %s; asking %s again", instance.instance_id, error, node.node_id or node.url)
            node.poke.set()
            limit = 2 * self.config.NC_POLLING_FREQUENCY + self.config.KOALA_NC_TIMEOUT + 5
            away = await self._wait_up(node, limit, settled=lambda: instance.confirmed_at is not None)
            if instance.confirmed_at is not None:
                return None
            if away is not None:
                return f"{error}; then {away}"
        else:
            return error
        if started.state == "Teardown":
            return f"node {node.node_id or node.url} ended it at once: {started.reason or started.detail}"
        self._confirm(instance, started.state or instance.state, started.detail)
        return None

    async def _wait_up(self, node: Node, limit: float, settled: Callable[[], bool] = lambda: False) -> str | None:
        """Wait (waking it if it sleeps) until the node is UP; None when it is, else why not. `settled`: stop
        waiting early when it says so (checked when the node's state changes, at least every second)."""
        if node.state is NodeState.UP:
            return None
        if node.state is NodeState.ASLEEP:
            self.power.wake(node)
        if node.state in (NodeState.WAKING, NodeState.ASLEEP):
            limit = self.config.POWER_WAKETHRESH
        node.poke.set()
        deadline = time.monotonic() + limit
        while not settled():
            left = deadline - time.monotonic()
            if left <= 0:
                return f"node {node.node_id or node.url} stayed {node.state.value} for {limit:.0f} s"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(node.up.wait(), min(left, 1.0))
                return None
        return None

    async def run_request(self, instance: Instance) -> cc_nc.RunInstanceRequest | None:
        """What a node needs to run the instance (RunInstance, or a migration's PrepareMigration); None when its
        launch specification was lost."""
        spec = await self.store.reservations.spec(instance.reservation_id)
        if spec is None:
            return None
        return cc_nc.RunInstanceRequest(
            **dict(spec, boot_volumes={}),  # the node gets its instance's only, with their targets (`volumes`)
            instance_id=instance.instance_id,
            reservation_id=instance.reservation_id,
            launch_index=instance.launch_index,
            net=instance.net,
        )

    async def _export_volumes(self, instance: Instance, node: Node, request: cc_nc.RunInstanceRequest) -> str | None:
        """The EBS volumes the instance boots with, exported to `node` before it creates the domain (their targets
        into `request.volumes`); why not, when they cannot be."""
        spec = await self.store.reservations.spec(instance.reservation_id)
        wanted = spec.boot_volumes.get(instance.instance_id) if spec is not None else None
        if not wanted:
            return None
        if self.boot_volumes is None:
            return "this zone has no block storage for its volumes"
        try:
            request.volumes = await self.boot_volumes(instance.instance_id, node.url, wanted)
        except RpcError as err:
            return f"its volumes could not be exported: {err.code}: {err.message}"
        return None

    async def start_network(self, node: Node, instance: Instance) -> None:
        """The node's side of the instance's network (its VLAN bridge), once per node and network."""
        net = instance.net
        if net.vlan < 0 and not net.bridge:
            return
        key = (node.url, net.vlan, net.bridge)
        if key in self._networks:
            return
        await self.nc.start_network(node.url, net.vlan, net.bridge)
        self._networks.add(key)

    def _confirm(self, instance: Instance, state: str, detail: str) -> None:
        if instance.confirmed_at is not None and instance.state == "Extant" and state == "Pending":
            return  # the node's push of a later state came first (a RunInstances call answers after its last run)
        if instance.confirmed_at is None:  # the first word from the node counts: a poll or push may come first
            instance.confirmed_at = time.monotonic()  # (a later time would take it off the node's numbers again)
        self._touch(instance)
        if state in ("Pending", "Extant"):
            instance.state = cast(ClusterState, state)
        instance.detail = detail or instance.detail
        self.changed(instance)

    async def _fail_over(self, instance: Instance, failed: Node, error: str) -> bool:
        """Release the failed node's reservation; place the instance on another fitting node if retries are
        left (True), else end it with the reason (False)."""
        log.warning("%s: %s", instance.instance_id, error)
        async with self.lock:
            failed.release(instance)
            if failed.url not in instance.tried:
                instance.tried.append(failed.url)
            if len(instance.tried) > self.config.KOALA_RUN_RETRIES:
                tried = len(instance.tried)
                self.end(instance, f"failed on {tried} node{'s' if tried > 1 else ''}: {error}")
                return False
            order, capacities = self.snapshot()
            snapshot = list(capacities)
            for url in instance.tried:  # not again on a node that failed it
                index = self._position.get(url)
                if index is not None:
                    snapshot[index] = NodeCapacity(url, NodeState.DOWN, 0, 0, 0)
            plan = self.policy(snapshot, instance.need, 1, self.cursor)
            if not plan.picks:
                self.end(instance, f"failed: {error}; no other node fits")  # tried all that fit
                return False
            self.cursor = plan.cursor
            target = order[plan.picks[0]]
            instance.node_url = target.url
            instance.confirmed_at = None  # a word from the failed node is no word from this one
            target.reserve(instance)
            for index in plan.wake:
                self.power.wake(order[index])
            await self.store.save_instances([instance])
        log.info("%s: retrying on %s", instance.instance_id, target.node_id or target.url)
        self.changed(instance)
        return True

    # --- terminate, reboot, console ------------------------------------------------------------------------
    async def terminate(self, ids: list[str]) -> list[str]:
        known = [self.instances[i.lower()] for i in ids if i.lower() in self.instances]
        acting = [i for i in known if i.live and not i.terminating]
        for instance in acting:
            instance.terminating = True
        await self.store.save_instances(acting)  # written before any node hears of it
        for instance in acting:
            self.spawn(self.terminate_one(instance), f"terminate {instance.instance_id}")
        return [i.instance_id for i in known]

    async def terminate_one(self, instance: Instance) -> None:
        """Ask the node to terminate it; a node that is away gets asked again when it answers a poll."""
        if not instance.live or instance.confirmed_at is None:
            return  # not at its node yet: the dispatcher ends it
        if self._moving(instance.instance_id):
            return  # the migration terminates it once it has settled where the guest runs
        node = self.nodes.get(instance.node_url)
        if node is None:
            self.end(instance, "terminated")
            return
        if node.state is not NodeState.UP:
            return
        assert node.gate is not None
        async with node.gate:
            try:
                answer = await self.nc.terminate_instance(node.url, instance.instance_id)
            except RpcError as err:
                if err.status == 404:
                    self.end(instance, "terminated")
                else:
                    log.warning("%s: TerminateInstance on %s: %s (will retry)", instance.instance_id, node.url, err)
                return
        self.end(instance, "terminated", answer.detail)

    async def reboot(self, ids: list[str]) -> list[str]:
        chosen = [self.instances[i.lower()] for i in ids if i.lower() in self.instances]
        chosen = [i for i in chosen if i.live and i.confirmed_at is not None]

        async def one(instance: Instance) -> None:
            node = self.nodes.get(instance.node_url)
            if node is None or node.state is not NodeState.UP:
                return
            try:
                await self.nc.reboot_instance(node.url, instance.instance_id)
            except RpcError as err:
                log.warning("%s: RebootInstance on %s: %s", instance.instance_id, node.url, err)

        await asyncio.gather(*(one(i) for i in chosen))
        return [i.instance_id for i in chosen]

    async def suspend(self, ids: list[str], resume: bool = False) -> SuspendInstancesResponse:
        """Suspend (or resume) instances on their nodes (the NC's SuspendInstance / ResumeInstance). A resumed
        instance needs its cores and memory free on its own node again (its saved state and disks are there)."""
        done: list[str] = []
        errors: dict[str, str] = {}
        for instance_id in ids:
            instance = self.instances.get(instance_id.lower())
            node = self.nodes.get(instance.node_url) if instance is not None else None
            if instance is None or node is None or not instance.live or instance.confirmed_at is None:
                errors[instance_id] = "not running in this cluster"
                continue
            if node.state is not NodeState.UP:
                errors[instance_id] = f"node {node.node_id or node.url} is {node.state.value}"
                continue
            if resume:
                async with self.lock:
                    _, capacities = self.snapshot()
                    capacity = next((c for c in capacities if c.key == node.url), None)
                    need = Need(instance.vm.cores, instance.vm.memory_mb, 0)
                    if instance.parked and (capacity is None or not placement.fits(capacity, need)):
                        errors[instance_id] = f"node {node.node_id or node.url} has no room for it now"
                        continue
                    node.park(instance, False)  # held again before the node restores it
            try:
                if resume:
                    answer = await self.nc.resume_instance(node.url, instance.instance_id)
                else:
                    answer = await self.nc.suspend_instance(node.url, instance.instance_id)
            except RpcError as err:
                errors[instance_id] = f"{err.code}: {err.message}"
                if resume:
                    node.park(instance, True)
                continue
            instance.detail = answer.detail or instance.detail
            node.park(instance, instance.detail == "suspended")
            self.changed(instance)
            done.append(instance.instance_id)
        return SuspendInstancesResponse(instance_ids=done, errors=errors)

    async def console_output(self, instance_id: str) -> str:
        instance = self.instances.get(instance_id.lower())
        if instance is None:
            raise RpcError(404, "InvalidInstanceID.NotFound", f"no instance {instance_id} in zone {self.zone}")
        node = self.nodes.get(instance.node_url)
        if node is None or node.state is not NodeState.UP or instance.confirmed_at is None:
            raise RpcError(503, "NodeUnavailable", f"the node of {instance_id} does not answer now")
        return await self.nc.console_output(node.url, instance.instance_id)

    async def bundle_call(
        self, op: BundleOperation, request: bundle_tasks.StartBundleRequest | bundle_tasks.BundleTaskRequest
    ) -> bundle_tasks.NodeBundleStatus:
        """BundleInstance, DescribeBundleTask, CancelBundleTask: forwarded to the node the instance runs on."""
        instance = self.instances.get(request.instance_id.lower())
        if instance is None:
            raise RpcError(404, "InvalidInstanceID.NotFound", f"no instance {request.instance_id} in zone {self.zone}")
        node = self.nodes.get(instance.node_url)
        if node is None or node.state is not NodeState.UP or instance.confirmed_at is None:
            raise RpcError(503, "NodeUnavailable", f"the node of {request.instance_id} does not answer now")
        return await self.nc.bundle(node.url, op, request)

    def node_notify(self, node_id: str, infos: list[InstanceInfo], full: bool) -> None:
        """An NC pushed instance changes (NotifyInstances)."""
        self.health.node_notify(node_id, infos, full)

    # --- node registry --------------------------------------------------------------------------------
    def _parse_node(self, entry: str) -> str:
        url = node_url(entry, self.config.NC_PORT)
        rest = url.split("://", 1)[1]
        host, _, port = rest.rpartition(":")
        if not _HOST.match(host) or not port.isdigit() or not 0 < int(port) < 65536 or "/" in rest:
            raise RpcError(400, "InvalidNode", f"not a node address (HOST, HOST:PORT or http://HOST:PORT): {entry!r}")
        return url

    async def register_node(self, entry: str, mac: str) -> NodeInfo:
        url = self._parse_node(entry)
        if mac:
            try:
                mac = normalize_mac(mac)
            except WakeError as err:
                raise RpcError(400, "InvalidMac", str(err)) from None
        node = self.nodes.get(url)
        if node is None:
            node = self._add_node(Node(url=url, source="registered", mac=mac))
            await self.store.save_node(node)
            self.health.watch(node)
            log.info("node %s registered", url)
        elif mac and node.mac != mac:
            node.mac = mac
            await self.store.save_node(node)
        return node.info()

    async def deregister_node(self, entry: str) -> None:
        url = self._parse_node(entry)
        node = self.nodes.get(url)
        if node is None:
            raise RpcError(404, "NodeNotFound", f"no node {url} in zone {self.zone}")
        if node.source == "config" and url in self.config.node_urls():
            raise RpcError(409, "NodeInConfig", f"{url} is listed in NODES; remove it there")
        if node.instances:
            raise RpcError(409, "NodeInUse", f"{url} still has {len(node.instances)} instances")
        del self.nodes[url]
        self._order = None
        self.health.unwatch(url)
        await self.store.delete_node(url)
        log.info("node %s deregistered", url)
