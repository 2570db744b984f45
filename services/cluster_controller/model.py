"""The CC's picture of its nodes and instances, and the capacity accounting between them.

A node's free capacity is what its NC reported as the maximum minus what the CC has reserved for the live
instances it placed there, never more than what the NC itself last reported free, less the instances the NC
had not yet seen when it made that report. So a reservation counts from the moment of placement, a release
from the moment the instance is gone, and the NC's own numbers keep the CC honest.

A live migration's record (migration.py drives it, store.py keeps it) lives here too.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from common.messages.cc_nc import NetConfig, VmType
from common.messages.clc_cc import ClusterInstance, ClusterState, NodeInfo
from common.messages.migration import MigrationMode, MigrationTarget
from services.cluster_controller.placement import Need, NodeCapacity, NodeState

LIVE_STATES = frozenset({"Pending", "Extant"})
MIGRATION_ACTIVE = ("preparing", "migrating", "finishing", "aborting")


@dataclass
class Instance:
    instance_id: str
    reservation_id: str
    owner_id: str
    node_url: str
    vm: VmType
    launch_index: int = 0
    net: NetConfig = field(default_factory=NetConfig)
    state: ClusterState = "Pending"  # Pending, Extant, Teardown (Unknown only in reports)
    detail: str = ""
    reason: str = ""
    launch_time: float = field(default_factory=time.time)
    confirmed_at: float | None = None  # monotonic time the node accepted it; None while in flight
    terminating: bool = False
    tried: list[str] = field(default_factory=list)
    ended_at: float = 0.0
    parked: bool = False  # suspended on its node: holds its disk there, not its cores and memory

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def need(self) -> Need:
        return Need(self.vm.cores, self.vm.memory_mb, self.vm.disk_gb)

    def report(self, node: Node | None) -> ClusterInstance:
        state = self.state
        if self.live and (node is None or node.state is NodeState.DOWN):
            state = "Unknown"  # its node does not answer: not terminated, just not known
        return ClusterInstance(
            instance_id=self.instance_id,
            reservation_id=self.reservation_id,
            owner_id=self.owner_id,
            node_id=node.node_id if node else "",
            state=state,
            detail=self.detail,
            reason=self.reason,
            net=self.net,
            launch_time=self.launch_time,
        )


@dataclass
class Node:
    url: str
    source: str  # "config" or "registered"
    node_id: str = ""
    mac: str = ""
    state: NodeState = NodeState.DOWN
    enabled: bool = True  # the NC's node_status
    maintenance: bool = False  # EvacuateNode: nothing is placed here until RestoreNode
    memory_max_mb: int = 0
    disk_max_gb: int = 0
    cores_max: int = 0
    # The NC's own free numbers, and the monotonic time by which every instance the CC had confirmed is in them
    # (the poll asks for them after the node's list has arrived: health.py).
    nc_memory_mb: int = 0
    nc_disk_gb: int = 0
    nc_cores: int = 0
    reported_at: float = 0.0
    # The CC's reservations: live instances placed here.
    instances: dict[str, Instance] = field(default_factory=dict)
    reserved_memory_mb: int = 0
    reserved_disk_gb: int = 0
    reserved_cores: int = 0
    idle_since: float | None = field(default_factory=time.monotonic)
    waking_since: float | None = None
    last_error: str = ""
    poke: asyncio.Event = field(default_factory=asyncio.Event)  # poll now
    up: asyncio.Event = field(default_factory=asyncio.Event)  # set while UP
    gate: asyncio.Semaphore | None = None
    stale: set[str] | None = None  # the cluster's set of nodes whose cached capacity must be recomputed

    def touch(self) -> None:
        """Something placement sees changed: recompute this node's entry of the snapshot."""
        if self.stale is not None:
            self.stale.add(self.url)

    def reserve(self, instance: Instance) -> None:
        if instance.instance_id in self.instances:
            return
        self.touch()
        self.instances[instance.instance_id] = instance
        if not instance.parked:
            self.reserved_memory_mb += instance.vm.memory_mb
            self.reserved_cores += instance.vm.cores
        self.reserved_disk_gb += instance.vm.disk_gb
        self.idle_since = None

    def park(self, instance: Instance, parked: bool) -> None:
        """A suspended instance gives its cores and memory back to the node (its disk stays); resumed, it holds
        them again."""
        if instance.parked == parked:
            return
        instance.parked = parked
        if instance.instance_id in self.instances:
            sign = -1 if parked else 1
            self.reserved_memory_mb += sign * instance.vm.memory_mb
            self.reserved_cores += sign * instance.vm.cores
            self.touch()

    def release(self, instance: Instance, ended: bool = False) -> None:
        """Forget the reservation; `ended`: the NC has let the instance go (terminated, torn down)."""
        if self.instances.pop(instance.instance_id, None) is None:
            return
        self.touch()
        if not instance.parked:
            self.reserved_memory_mb -= instance.vm.memory_mb
            self.reserved_cores -= instance.vm.cores
        self.reserved_disk_gb -= instance.vm.disk_gb
        confirmed = instance.confirmed_at
        if ended and self.reported_at > 0 and confirmed is not None and confirmed <= self.reported_at:
            # The NC's last numbers counted it, and it is gone: they are that much higher now, not only after the
            # next poll (a launch right after a termination was refused for up to NC_POLLING_FREQUENCY).
            if not instance.parked:  # a suspended instance's cores and memory were not in them
                self.nc_memory_mb += instance.vm.memory_mb
                self.nc_cores += instance.vm.cores
            self.nc_disk_gb += instance.vm.disk_gb
        if not self.instances:
            self.idle_since = time.monotonic()

    def free(self) -> tuple[int, int, int]:
        """(memory MiB, disk GB, cores) free for new instances."""
        memory = self.memory_max_mb - self.reserved_memory_mb
        disk = self.disk_max_gb - self.reserved_disk_gb
        cores = self.cores_max - self.reserved_cores
        if self.reported_at:
            # Instances confirmed after that time (or not yet) may not be in the NC's numbers: taken off them.
            unseen = [i for i in self.instances.values() if i.confirmed_at is None or i.confirmed_at > self.reported_at]
            memory = min(memory, self.nc_memory_mb - sum(i.vm.memory_mb for i in unseen))
            disk = min(disk, self.nc_disk_gb - sum(i.vm.disk_gb for i in unseen))
            cores = min(cores, self.nc_cores - sum(i.vm.cores for i in unseen))
        return max(memory, 0), max(disk, 0), max(cores, 0)

    def capacity(self) -> NodeCapacity:
        state = self.state if self.enabled and not self.maintenance else NodeState.DOWN
        memory, disk, cores = self.free()
        return NodeCapacity(self.url, state, memory, disk, cores, len(self.instances))

    def info(self) -> NodeInfo:
        memory, disk, cores = self.free()
        return NodeInfo(
            url=self.url,
            node_id=self.node_id,
            state=self.state.value,
            source=self.source,
            mac=self.mac,
            memory_max_mb=self.memory_max_mb,
            memory_available_mb=memory,
            disk_max_gb=self.disk_max_gb,
            disk_available_gb=disk,
            cores_max=self.cores_max,
            cores_available=cores,
            instances=len(self.instances),
            maintenance=self.maintenance,
        )

    def set_state(self, state: NodeState) -> None:
        self.state = state
        self.touch()
        if state is NodeState.UP:
            self.up.set()
        else:
            self.up.clear()


@dataclass
class Migration:
    instance_id: str
    source_url: str
    target_url: str
    mode: MigrationMode
    state: str
    target: MigrationTarget | None = None
    error: str = ""
    progress: int = 0
    elapsed_ms: int = 0
    downtime_ms: int = 0
    started_at: float = 0.0
    updated_at: float = 0.0
    task: asyncio.Task[None] | None = None
    marks: dict[str, float] = field(default_factory=dict)  # monotonic time each state was entered (for the log)

    @property
    def active(self) -> bool:
        return self.state in MIGRATION_ACTIVE
