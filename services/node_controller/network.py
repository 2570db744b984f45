"""The NC's part of cluster networking: the bridge a guest joins, created on demand, removed with the last guest.

- SYSTEM, STATIC, MANAGED-NOVLAN: guests join VNET_BRIDGE (created if missing, with VNET_PUBINTERFACE
  enslaved to it when set); it is the host's network, so it is never removed.
- MANAGED: per network a VLAN device `<VNET_PUBINTERFACE>.<vlan>` enslaved to a bridge `koalabr<vlan>` (the
  name the CC hands out in NetConfig.bridge); both are removed when the network's last guest is gone.

Every command runs through `common.hostcmd` (off the event loop, with a timeout, optionally inside a network
namespace); the runner is injectable, so MANAGED's VLAN commands (no 8021q on the test machines) can be checked as a
plan.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from aiohttp import web
from pydantic import BaseModel, Field, field_validator

from common.hostcmd import CommandFailed, Result, Runner, SubprocessRunner
from common.messages.cc_nc import RunInstanceRequest
from common.rpc import RpcError

if TYPE_CHECKING:
    from services.node_controller.service import NodeControllerService

log = logging.getLogger("koala.nc.network")
_BRIDGE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,14}$")
BRIDGE_PREFIX = "koalabr"
ENSURE_GRACE = 120.0  # seconds a freshly ensured bridge is kept even with no instance recorded on it


class NetworkError(Exception):
    pass


def valid_bridge(name: str) -> bool:
    return bool(_BRIDGE.match(name)) and name not in (".", "..")


class NodeVnetSettings(BaseModel):
    """The NC's VNET_* keys (eucalyptus.conf names); a mixin of the NC's configuration."""

    VNET_MODE: Literal["SYSTEM", "STATIC", "MANAGED", "MANAGED-NOVLAN"] = Field(
        "SYSTEM", description="The cluster's networking mode (as the CC's)."
    )
    VNET_PUBINTERFACE: str = Field(
        "", description="NC: the interface toward the CC's private network (the VLAN parent in MANAGED)."
    )
    VNET_BRIDGE: str = Field("", description="NC: the bridge guests join in SYSTEM, STATIC and MANAGED-NOVLAN.")
    KOALA_VNET_NETNS: str = Field("", description="Run network commands inside this network namespace (tests).")

    @field_validator("VNET_PUBINTERFACE", "VNET_BRIDGE")
    @classmethod
    def _ifname(cls, value: str) -> str:
        if value and not _IFNAME.match(value):
            raise ValueError(f"{value!r} is not an interface name")
        return value


@dataclass
class _Live:
    kind: str
    master: str
    up: bool


class NodeNetwork:
    """Bridges (and VLAN devices) for the guests of this node."""

    def __init__(self, settings: NodeVnetSettings, runner: Runner | None = None):
        self.settings = settings
        self.runner = runner or SubprocessRunner(settings.KOALA_VNET_NETNS)
        self._lock = asyncio.Lock()
        # Bridges just made for a guest that is not yet recorded as an instance: not removed for a while.
        self._ensured: dict[str, float] = {}

    def bridge_for(self, vlan: int, bridge: str = "") -> str:
        """The bridge a guest of network `vlan` joins (`bridge`: what the CC said, if anything)."""
        if self.settings.VNET_MODE == "MANAGED":
            if not 2 <= vlan <= 4095:
                raise NetworkError(f"MANAGED needs a VLAN 2..4095, got {vlan}")
            return f"{BRIDGE_PREFIX}{vlan}"
        name = bridge or self.settings.VNET_BRIDGE
        if not name or not valid_bridge(name):
            raise NetworkError(f"no usable bridge (VNET_BRIDGE={self.settings.VNET_BRIDGE!r}, asked {bridge!r})")
        return name

    async def _run(self, argv: list[str]) -> Result:
        try:
            return await self.runner.run(argv)
        except CommandFailed as err:
            raise NetworkError(str(err)) from None

    async def _live(self) -> dict[str, _Live]:
        out = (await self._run(["ip", "-j", "-d", "link", "show"])).stdout
        live = {}
        for entry in json.loads(out or "[]"):
            kind = (entry.get("linkinfo") or {}).get("info_kind", "")
            live[entry["ifname"]] = _Live(kind, entry.get("master", ""), "UP" in entry.get("flags", []))
        return live

    async def ensure(self, vlan: int = -1, bridge: str = "") -> str:
        """Make sure the network's bridge (and VLAN device) exist and are up; returns the bridge name."""
        name = self.bridge_for(vlan, bridge)
        pubif = self.settings.VNET_PUBINTERFACE
        async with self._lock:
            live = await self._live()
            plan: list[list[str]] = []
            if name not in live:
                plan.append(["ip", "link", "add", name, "type", "bridge"])
            if name not in live or not live[name].up:
                plan.append(["ip", "link", "set", name, "up"])
            if self.settings.VNET_MODE == "MANAGED":
                if not pubif or pubif not in live:
                    raise NetworkError(f"VNET_PUBINTERFACE {pubif!r} does not exist on this node")
                device = f"{pubif}.{vlan}"
                if len(device) > 15:
                    raise NetworkError(f"VLAN device name {device!r} is too long")
                if device not in live:
                    plan.append(["ip", "link", "add", "link", pubif, "name", device, "type", "vlan", "id", str(vlan)])
                if device not in live or live[device].master != name:
                    plan.append(["ip", "link", "set", device, "master", name])
                if device not in live or not live[device].up:
                    plan.append(["ip", "link", "set", device, "up"])
            elif pubif:
                if pubif not in live:
                    raise NetworkError(f"VNET_PUBINTERFACE {pubif!r} does not exist on this node")
                if live[pubif].master != name:
                    plan.append(["ip", "link", "set", pubif, "master", name])
                if not live[pubif].up:
                    plan.append(["ip", "link", "set", pubif, "up"])
            for argv in plan:
                await self._run(argv)
            self._ensured[name] = time.monotonic()
            if plan:
                log.info("network for vlan %s: bridge %s ready (%d commands)", vlan, name, len(plan))
        return name

    async def release_unused(self, bridges_in_use: Iterable[str]) -> list[str]:
        """MANAGED: remove the bridges and VLAN devices of networks no guest here uses any more."""
        if self.settings.VNET_MODE != "MANAGED":
            return []
        now = time.monotonic()
        keep = set(bridges_in_use) | {name for name, at in self._ensured.items() if now - at < ENSURE_GRACE}
        pubif = self.settings.VNET_PUBINTERFACE
        removed = []
        async with self._lock:
            live = await self._live()
            for name in sorted(live):
                vlan = name[len(BRIDGE_PREFIX) :]
                if not name.startswith(BRIDGE_PREFIX) or not vlan.isdigit() or name in keep:
                    continue
                if live[name].kind != "bridge":
                    continue
                device = f"{pubif}.{vlan}"
                if device in live and live[device].kind == "vlan":
                    await self._run(["ip", "link", "del", device])
                await self._run(["ip", "link", "del", name])
                removed.append(name)
        if removed:
            log.info("removed unused networks %s", ", ".join(removed))
        return removed


RELEASE_SECONDS = 10.0


def install(service: NodeControllerService) -> NodeNetwork | None:
    """Give an NC service its NodeNetwork (None with libvirt's test driver: the host is never touched) and a
    loop that removes MANAGED networks no live guest uses any more."""
    if service.config.HYPERVISOR == "test":
        return None
    node = NodeNetwork(service.config)

    def bridges_in_use() -> set[str]:
        manager = service.manager
        if manager is None:
            return set()
        used = set()
        for inst in manager.instances.values():
            if inst.state != "Teardown":
                with contextlib.suppress(NetworkError):
                    used.add(node.bridge_for(inst.request.net.vlan, inst.request.net.bridge))
        return used

    async def release_loop() -> None:
        while True:
            await asyncio.sleep(RELEASE_SECONDS)
            try:
                await node.release_unused(bridges_in_use())
            except NetworkError as err:
                log.warning("cannot remove unused networks: %s", err)

    tasks: list[asyncio.Task[None]] = []

    async def on_startup(_: web.Application) -> None:
        if node.settings.VNET_MODE == "MANAGED":
            tasks.append(asyncio.create_task(release_loop(), name="network release"))

    async def on_cleanup(_: web.Application) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    service.app.on_startup.append(on_startup)
    service.app.on_cleanup.append(on_cleanup)
    return node


async def prepare_run(node: NodeNetwork, request: RunInstanceRequest) -> RunInstanceRequest:
    """Before a guest is defined: its network's bridge exists (again, if the last guest took it away) and the
    request names it (SYSTEM, STATIC, MANAGED-NOVLAN: VNET_BRIDGE when the CC named none)."""
    net = request.net
    if node.settings.VNET_MODE != "MANAGED" and not net.bridge and not node.settings.VNET_BRIDGE:
        return request
    try:
        bridge = await node.ensure(net.vlan, net.bridge)
    except NetworkError as err:
        raise RpcError(400, "NetworkError", str(err)) from None
    if bridge == net.bridge:
        return request
    return request.model_copy(update={"net": net.model_copy(update={"bridge": bridge})})
