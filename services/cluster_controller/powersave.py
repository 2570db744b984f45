"""POWERSAVE's actions: idle nodes sent PowerDown, sleeping nodes woken by their wake plan (power.py).

`PowerSave` is a collaborator of the cluster engine (cluster.py): it shares the engine's node table and its
placement lock (no placement sees a node while it goes to sleep), and runs wake commands through `runner`."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

from common.hostcmd import CommandFailed, Runner
from common.rpc import RpcError
from common.tasks import TaskSet
from services.cluster_controller.config import ClusterControllerConfig
from services.cluster_controller.model import Node
from services.cluster_controller.nc_client import NcClient
from services.cluster_controller.placement import NodeState
from services.cluster_controller.power import PowerView, WakeError, WakePlan, nodes_to_power_down, wake_plan
from services.cluster_controller.store import Store

log = logging.getLogger("koala.cc")


class PowerSave:
    def __init__(
        self,
        config: ClusterControllerConfig,
        nc: NcClient,
        store: Store,
        nodes: dict[str, Node],
        lock: asyncio.Lock,
        tasks: TaskSet,
        runner: Runner,
    ):
        self.config, self.nc, self.store, self.nodes = config, nc, store, nodes
        self.lock, self.tasks, self.runner = lock, tasks, runner

    async def run(self) -> None:
        """Power down the nodes idle for POWER_IDLETHRESH, for as long as the cluster runs."""
        interval = min(self.config.NC_POLLING_FREQUENCY, self.config.POWER_IDLETHRESH / 4)
        while True:
            await asyncio.sleep(interval)
            views = [PowerView(n.url, n.state, len(n.instances), n.idle_since, n.mac) for n in self.nodes.values()]
            for url in nodes_to_power_down(views, time.monotonic(), self.config.POWER_IDLETHRESH):
                await self._power_down(self.nodes[url])

    async def _power_down(self, node: Node) -> None:
        async with self.lock:  # no placement sees the node while it goes to sleep
            if node.instances or node.state is not NodeState.UP:
                return
            try:
                await self.nc.power_down(node.url)
            except RpcError as err:
                log.warning("PowerDown of %s failed: %s", node.url, err)
                return
            node.set_state(NodeState.ASLEEP)
            await self.store.save_node(node)
        log.info("node %s idle for %.0f s: powered down", node.url, self.config.POWER_IDLETHRESH)

    def wake(self, node: Node) -> None:
        """Wake a sleeping node (placement chose it); a node not ASLEEP is left as it is."""
        if node.state is not NodeState.ASLEEP:
            return
        try:
            plan = wake_plan(
                node.mac, self.config.KOALA_WOL_METHOD, self.config.KOALA_WOL_INTERFACE, self.config.KOALA_WOL_BROADCAST
            )
        except WakeError as err:
            log.error("cannot wake %s: %s", node.url, err)
            return
        node.set_state(NodeState.WAKING)
        node.waking_since = time.monotonic()
        self.tasks.spawn(self._send_wake(node, plan), f"wake {node.url}")
        node.poke.set()

    async def _send_wake(self, node: Node, plan: WakePlan) -> None:
        log.info("waking %s (%s) by %s", node.url, plan.mac, " ".join(plan.argv) or f"UDP to {plan.broadcast}")
        await self.store.save_node(node)
        try:
            if plan.argv:
                result = await self.runner.run(plan.argv, check=False)
                if result.code:
                    log.error("%s failed: %s", plan.argv[0], result.stderr.strip())
            else:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                    sock.setblocking(False)
                    sock.sendto(plan.packet, (plan.broadcast, plan.port))
        except (OSError, CommandFailed) as err:
            log.error("cannot wake %s: %s", node.url, err)
