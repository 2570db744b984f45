"""Node health and reconciliation: each node polled on its own (DescribeResource + DescribeInstances, its own
timeout), UP/DOWN transitions, and the comparison of what a node runs with what the CC placed there.

`NodeHealth` is a collaborator of the cluster engine (cluster.py): it shares the engine's node and instance
tables and is handed the three instance events it causes (changed, ended, to be terminated) explicitly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from common.messages.cc_nc import InstanceInfo, VmType
from common.rpc import PeerUnreachable, RpcError
from common.tasks import TaskSet
from services.cluster_controller.config import ClusterControllerConfig
from services.cluster_controller.model import Instance, Node
from services.cluster_controller.nc_client import NcClient
from services.cluster_controller.notifier import Notifier
from services.cluster_controller.placement import NodeState
from services.cluster_controller.store import Store

SUSPENDED = "suspended"  # the NC's detail for a guest saved to disk (SuspendInstance)
log = logging.getLogger("koala.cc")


Changed = Callable[[Instance], None]  # an observed change: save it and push it to the CLC
Terminate = Callable[[Instance], Coroutine[Any, Any, None]]  # ask its node (again) to terminate it
Moving = Callable[[str, str], bool]  # a migration moves the instance to or from that node: its copies are no strays


class Ended(Protocol):
    """The instance is over: release its capacity, report Teardown with the reason (and the node's detail)."""

    def __call__(self, instance: Instance, reason: str, detail: str = "") -> None: ...


class NodeHealth:
    def __init__(
        self,
        config: ClusterControllerConfig,
        nc: NcClient,
        store: Store,
        notifier: Notifier,
        nodes: dict[str, Node],
        instances: dict[str, Instance],
        tasks: TaskSet,
        *,
        changed: Changed,
        ended: Ended,
        terminate: Terminate,
        moving: Moving = lambda instance_id, node_url: False,
    ):
        self.config, self.nc, self.store, self.notifier = config, nc, store, notifier
        self.nodes, self.instances, self.tasks = nodes, instances, tasks
        self._changed, self._end, self._terminate_one = changed, ended, terminate
        self._moving = moving
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._by_id: dict[str, Node] = {}  # node id -> node, for pushes (checked against `nodes` at each use)

    def watch(self, node: Node) -> None:
        self._watchers[node.url] = asyncio.create_task(self._watch_loop(node), name=f"watch {node.url}")

    def unwatch(self, url: str) -> None:
        task = self._watchers.pop(url, None)
        if task is not None:
            task.cancel()

    def watchers(self) -> list[asyncio.Task[None]]:
        return list(self._watchers.values())

    async def _watch_loop(self, node: Node) -> None:
        """Each node has its own loop and timeout, so one slow node never delays the others."""
        first = True
        while self.nodes.get(node.url) is node:
            if node.state is not NodeState.ASLEEP:
                try:
                    await self._poll(node, first)
                except Exception:
                    log.exception("poll of %s failed", node.url)
                first = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(node.poke.wait(), self.config.NC_POLLING_FREQUENCY)
            node.poke.clear()

    async def _poll(self, node: Node, first: bool) -> None:
        # The listing first, then the numbers: every instance listed (or confirmed otherwise) by the time the
        # list arrived is in the numbers asked for after it, so they count the instances confirmed by then
        # (Node.free). Asked together, an instance this poll confirmed was in the numbers and yet taken off
        # them again until the next poll: a zone refused launches it had room for.
        sent = time.monotonic()
        try:
            listing = await self.nc.describe_instances(node.url)
            listed_at = time.monotonic()
            resource = await self.nc.describe_resource(node.url)
            node_id = await self.nc.node_id(node.url)
        except (RpcError, PeerUnreachable) as err:
            node.last_error = str(err)
            if node.state is NodeState.WAKING:
                since = node.waking_since or sent
                if time.monotonic() - since < self.config.POWER_WAKETHRESH:
                    return
                log.warning("node %s did not wake within %.0f s", node.url, self.config.POWER_WAKETHRESH)
            if node.state is not NodeState.DOWN or first:
                if node.state is not NodeState.DOWN:
                    log.warning("node %s is DOWN: %s", node.url, err)
                node.set_state(NodeState.DOWN)
                node.waking_since = None
                await self.store.save_node(node)
                for instance in node.instances.values():  # reported Unknown until the node answers
                    self.notifier.changed(instance.report(node))
            return
        was = node.state
        node.node_id = node_id
        node.enabled = resource.node_status == "enabled"
        node.memory_max_mb, node.disk_max_gb, node.cores_max = (
            resource.memory_max_mb,
            resource.disk_max_gb,
            resource.cores_max,
        )
        node.nc_memory_mb, node.nc_disk_gb, node.nc_cores = (
            resource.memory_available_mb,
            resource.disk_available_gb,
            resource.cores_available,
        )
        node.reported_at = listed_at
        node.last_error = ""
        node.waking_since = None
        node.set_state(NodeState.UP)
        if was is not NodeState.UP:
            log.info("node %s (%s) is UP (was %s)", node.url, node_id, was.value)
            await self.store.save_node(node)
            for instance in node.instances.values():
                self.notifier.changed(instance.report(node))
        self._reconcile(node, listing, sent, listed_at)

    def _reconcile(
        self, node: Node, infos: list[InstanceInfo], polled_at: float | None, listed_at: float | None = None
    ) -> None:
        """Match the node's report with the CC's records. `polled_at` is set for a complete list the CC asked
        for: instances the node had accepted before then and no longer has are gone. `listed_at`: when the
        node's list arrived, the moment its instances are known to be there (else now)."""
        seen = set()
        for info in infos:
            instance_id = info.instance_id.lower()
            seen.add(instance_id)
            instance = self.instances.get(instance_id)
            if instance is None:
                if info.state != "Teardown":
                    self._adopt(node, info)
                continue
            if self._moving(instance_id, node.url):
                continue  # either end of a migration: the migration settles it
            if instance.node_url != node.url or not instance.live:
                # A stray: failed over elsewhere, or ended here already; it must not run on this node.
                if info.state != "Teardown" and polled_at is not None:
                    self.tasks.spawn(self._terminate_stray(node, instance_id), f"stray {instance_id}")
                continue
            if info.state == "Teardown":
                self._end(instance, "terminated" if instance.terminating else info.reason or "ended", info.detail)
                continue
            if instance.confirmed_at is None:
                instance.confirmed_at = listed_at if listed_at is not None else time.monotonic()
                node.touch()
            node.park(instance, info.detail == SUSPENDED)  # (also after a CC restart, which forgets it)
            if instance.state != info.state or instance.detail != info.detail:
                instance.state, instance.detail = info.state, info.detail
                self._changed(instance)
            if instance.terminating and polled_at is not None:
                self.tasks.spawn(self._terminate_one(instance), f"terminate {instance_id}")
        if polled_at is None:
            return
        for instance in list(node.instances.values()):
            if instance.instance_id in seen or instance.confirmed_at is None or instance.confirmed_at > polled_at:
                continue
            if instance.node_url != node.url:
                continue  # held here for a migration on its way in
            if instance.terminating:
                self._end(instance, "terminated")
            else:
                self._end(instance, f"lost: node {node.node_id or node.url} no longer has it")

    def _adopt(self, node: Node, info: InstanceInfo) -> None:
        """An instance the CC did not place (e.g. its database was lost): count it and report it."""
        vm = info.vm_type or VmType(name="unknown", cores=1, memory_mb=1, disk_gb=1)
        instance = Instance(
            instance_id=info.instance_id.lower(),
            reservation_id=info.reservation_id,
            owner_id=info.owner_id,
            node_url=node.url,
            vm=vm,
            launch_index=info.launch_index,
            net=info.net,
            state=info.state,
            detail=info.detail,
            launch_time=info.launch_time or time.time(),
            confirmed_at=time.monotonic(),
        )
        instance.parked = info.detail == SUSPENDED
        self.instances[instance.instance_id] = instance
        node.reserve(instance)
        log.info("adopted %s found running on %s", instance.instance_id, node.url)
        self._changed(instance)

    def _named(self, node_id: str) -> Node | None:
        """The node whose certificate names it `node_id`, by an index checked at each use (a push per node and
        state change: a scan of a zone's hundreds of nodes each time was 2 % of a busy CC)."""
        node = self._by_id.get(node_id)
        if node is not None and node.node_id == node_id and self.nodes.get(node.url) is node:
            return node
        node = next((n for n in self.nodes.values() if n.node_id == node_id), None)
        if node is None:
            self._by_id.pop(node_id, None)
        else:
            self._by_id[node_id] = node
        return node

    async def _terminate_stray(self, node: Node, instance_id: str) -> None:
        log.warning("%s runs on %s where the CC did not keep it: terminating that copy", instance_id, node.url)
        with contextlib.suppress(RpcError):
            await self.nc.terminate_instance(node.url, instance_id, idempotent=False)

    def node_notify(self, node_id: str, infos: list[InstanceInfo], full: bool) -> None:
        """An NC pushed instance changes. Only the CC's own polls decide that an instance is gone."""
        node = self._named(node_id)
        if node is None:
            for candidate in self.nodes.values():  # not polled yet: poll the unnamed ones now
                if not candidate.node_id:
                    candidate.poke.set()
            return
        if node.state is not NodeState.UP:
            node.poke.set()  # it is back: let a poll bring its numbers and the full picture
        self._reconcile(node, infos, None)
