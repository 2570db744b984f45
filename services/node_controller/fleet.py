"""A simulated node fleet: many node controllers in one process, for scale work on one machine.

Each member is a whole, unchanged `NodeControllerService` from its own configuration file: its own certificate
(KOALA_SERVICE_ID), port, state directory and database, and its own simulated host, a libvirt test-driver
connection to its own node file (`test:///path/node.xml`: a private hypervisor whose cores and memory the file
sets, capped by MAX_*). So the CCs and the CLC see real NCs speaking the real signed protocol; only the process
is shared, which is what lets 1,000 nodes fit on a 2-core machine (one Python interpreter per node would not).

Only the test hypervisor is accepted: a real libvirtd is one host, and several NCs on it would each offer it
whole. `koala nc-fleet --config-dir DIR` runs every `*.conf` of DIR (or `--config FILE` repeated).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from aiohttp import web

from common import pki
from common.config import ConfigError
from common.logs import setup_logging
from common.service import run_until_stopped, stop_on_signals
from services.node_controller.config import NodeControllerConfig
from services.node_controller.service import NodeControllerService

log = logging.getLogger("koala.nc.fleet")
MAX_MEMBERS = 5000
START_CONCURRENCY = 16  # members started at once: each opens its database and its hypervisor


class FleetError(Exception):
    pass


def load(paths: list[Path]) -> list[NodeControllerConfig]:
    """Every member's configuration, checked: test hypervisor only, distinct ids, ports and state directories."""
    if not paths:
        raise FleetError("no node configuration given")
    if len(paths) > MAX_MEMBERS:
        raise FleetError(f"{len(paths)} nodes: at most {MAX_MEMBERS} per fleet process")
    configs = []
    for path in paths:
        try:
            config = NodeControllerConfig.load(str(path))
        except ConfigError as err:
            raise FleetError(f"{path}: {err}") from None
        if config.HYPERVISOR != "test":
            raise FleetError(f"{path}: HYPERVISOR={config.HYPERVISOR}: a fleet simulates hosts (HYPERVISOR=test only)")
        configs.append(config)
    for what, values in (
        ("KOALA_SERVICE_ID", [c.KOALA_SERVICE_ID for c in configs]),
        ("NC_PORT", [c.port for c in configs]),
        ("KOALA_STATE_DIR", [str(c.KOALA_STATE_DIR) for c in configs]),
        ("KOALA_LIBVIRT_URI", [c.libvirt_uri for c in configs]),
    ):
        if len(set(values)) != len(values):
            raise FleetError(f"two nodes share a {what}: each node needs its own")
    return configs


async def serve(configs: list[NodeControllerConfig], stop: asyncio.Event) -> None:
    """Start every member (a few at a time), serve until `stop` is set, then stop them all."""
    members = [NodeControllerService(config) for config in configs]
    runners: dict[int, web.AppRunner] = {}
    gate = asyncio.Semaphore(START_CONCURRENCY)

    failed: list[BaseException] = []

    async def start(index: int, member: NodeControllerService) -> None:
        async with gate:
            if failed:
                return  # another member could not start: the fleet will not serve
            try:
                runners[index] = await member.start()
            except Exception as err:
                failed.append(err)
                # Its database (a thread) and hypervisor may be open already: closed, so that a fleet that
                # cannot start exits rather than hang on them (e.g. a node's port taken meanwhile).
                with contextlib.suppress(Exception):
                    await member.on_stop()
                    await member.client.close()

    try:
        # Members being started finish starting (cancelled half-way, one would leave its database thread
        # behind); those not begun are skipped; then every started one is stopped below.
        await asyncio.gather(*(start(i, m) for i, m in enumerate(members)))
        if failed:
            raise failed[0]
        log.info("fleet of %d nodes serving", len(members))
        await stop.wait()
        pushes = sum(m.manager.notifier.sent for m in members if m.manager is not None)
        log.warning("stopping %d nodes (they pushed %d NotifyInstances)", len(members), pushes)
    finally:
        await asyncio.gather(*(members[i].stop(runner) for i, runner in runners.items()), return_exceptions=True)
    log.info("stopped")


def run(paths: list[Path], log_level: str = "INFO") -> int:
    """Run a fleet in the foreground until SIGTERM; the exit status for the CLI."""
    setup_logging("nc-fleet", log_level)

    def main() -> None:
        configs = load(paths)

        # Each member checks its certificate when it is built; a bad one stops the fleet before anything runs.
        async def serve_until_stopped() -> None:
            await serve(configs, stop_on_signals())

        asyncio.run(serve_until_stopped())

    return run_until_stopped("nc-fleet", main, [((FleetError, ConfigError, pki.PkiError), "cannot start")])
