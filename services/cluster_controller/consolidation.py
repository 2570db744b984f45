"""POWERSAVE's consolidation: pack the zone's instances onto fewer nodes by live migration when that lets a node go
empty (and then sleep, by the power loop's own rule), as OpenNebula's consolidation policies do.

The plan is a pure function of what the CC knows: the node with the fewest instances is emptied when every one of
its instances fits on the other awake nodes, busiest first (first fit, largest instance first), each target keeping
a memory reserve. Hysteresis: a node must have looked like this for KOALA_CONSOLIDATE_AFTER seconds in a row before
anything moves, and an instance moved in the last KOALA_CONSOLIDATE_COOLDOWN seconds is not moved again; at most
KOALA_CONSOLIDATE_MAX_MIGRATIONS migrations run at once; nothing moves to or from a node short of memory (its own
report under the reserve), nor while another migration is settling on the nodes involved.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.rpc import RpcError
from services.cluster_controller.placement import NodeState

if TYPE_CHECKING:
    from services.cluster_controller.cluster import Cluster

log = logging.getLogger("koala.cc.consolidation")


@dataclass(frozen=True)
class Guest:
    instance_id: str
    memory_mb: int
    cores: int
    disk_gb: int
    movable: bool  # Extant, running, confirmed, not suspended, not being migrated or terminated, not moved lately


@dataclass(frozen=True)
class Host:
    key: str
    memory_max_mb: int
    free_memory_mb: int
    free_cores: int
    free_disk_gb: int
    guests: tuple[Guest, ...]
    usable: bool  # UP, enabled, not under maintenance, not short of memory, no migration settling there


def plan(hosts: Sequence[Host], reserve: float) -> list[tuple[str, str]]:
    """(instance id, target key) moves that empty one host, or [] when none can be emptied. `reserve`: the share of
    a target's memory kept free after the moves."""
    usable = [h for h in hosts if h.usable]
    if len(usable) < 2:
        return []
    for source in sorted((h for h in usable if h.guests), key=lambda h: (len(h.guests), h.key)):
        if not all(g.movable for g in source.guests):
            continue
        targets = sorted((h for h in usable if h.key != source.key and h.guests),
                         key=lambda h: (h.free_memory_mb, h.key))  # fmt: skip  # busiest first
        room = {h.key: [h.free_memory_mb - int(h.memory_max_mb * reserve), h.free_cores, h.free_disk_gb]
                for h in targets}  # fmt: skip
        moves: list[tuple[str, str]] = []
        for guest in sorted(source.guests, key=lambda g: (-g.memory_mb, g.instance_id)):
            for target in targets:
                left = room[target.key]
                if guest.memory_mb <= left[0] and guest.cores <= left[1] and guest.disk_gb <= left[2]:
                    left[0] -= guest.memory_mb
                    left[1] -= guest.cores
                    left[2] -= guest.disk_gb
                    moves.append((guest.instance_id, target.key))
                    break
            else:
                break  # one does not fit: this host stays as it is
        if len(moves) == len(source.guests):
            return moves
    return []


class Consolidation:
    """The loop: look, wait for the same picture to hold, then start the moves (within the in-flight limit)."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.config = cluster.config
        self.moved_at: dict[str, float] = {}  # instance id -> monotonic time of its last consolidation move
        self._candidate: tuple[tuple[str, str], ...] = ()
        self._since = 0.0

    async def run(self) -> None:
        interval = max(0.5, min(self.config.NC_POLLING_FREQUENCY, self.config.KOALA_CONSOLIDATE_AFTER / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.step(time.monotonic())
            except Exception:
                log.exception("consolidation step failed")

    def hosts(self, now: float) -> list[Host]:
        cluster, config = self.cluster, self.config
        migrations = cluster.migrations
        busy = {url for m in migrations.by_instance.values() if m.active for url in (m.source_url, m.target_url)}
        hosts = []
        for node in cluster.nodes.values():
            memory, disk, cores = node.free()
            short = node.reported_at > 0 and node.nc_memory_mb < node.memory_max_mb * config.KOALA_CONSOLIDATE_RESERVE
            guests = tuple(
                Guest(
                    i.instance_id,
                    i.vm.memory_mb,
                    i.vm.cores,
                    i.vm.disk_gb,
                    movable=i.state == "Extant"
                    and i.confirmed_at is not None
                    and not i.parked
                    and not i.terminating
                    and migrations.active_for(i.instance_id) is None
                    and now - self.moved_at.get(i.instance_id, -1e9) >= config.KOALA_CONSOLIDATE_COOLDOWN,
                )
                for i in node.instances.values()
                if i.node_url == node.url
            )
            usable = (
                node.state is NodeState.UP and node.enabled and not node.maintenance and not short
                and node.url not in busy
            )  # fmt: skip
            hosts.append(Host(node.url, node.memory_max_mb, memory, cores, disk, guests, usable))
        return hosts

    async def step(self, now: float) -> list[str]:
        """One look; the instance ids it started moving."""
        config = self.config
        in_flight = sum(1 for m in self.cluster.migrations.by_instance.values() if m.active)
        if in_flight >= config.KOALA_CONSOLIDATE_MAX_MIGRATIONS:
            return []
        moves = tuple(plan(self.hosts(now), config.KOALA_CONSOLIDATE_RESERVE))
        if moves != self._candidate:  # hysteresis: the same picture must hold for a while
            self._candidate, self._since = moves, now
            return []
        if not moves or now - self._since < config.KOALA_CONSOLIDATE_AFTER:
            return []
        started = []
        for instance_id, target_url in moves[: config.KOALA_CONSOLIDATE_MAX_MIGRATIONS - in_flight]:
            target = self.cluster.nodes.get(target_url)
            try:
                await self.cluster.migrations.begin(instance_id, target)
            except RpcError as err:
                log.info("consolidation: %s stays (%s)", instance_id, err.message)
                continue
            self.moved_at[instance_id] = now
            started.append(instance_id)
        if started:
            log.info("consolidation: moving %s to empty a node", ", ".join(started))
        self._candidate, self._since = (), now
        return started
