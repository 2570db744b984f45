"""The CC's network manager: holds what the CLC asked for, persists it, and converges the live network.

Every change is written to the database first, then the whole desired state is recomputed and applied (the
applier changes only what differs). Concurrent changes coalesce: one apply covers all changes made before it
started. A periodic reconcile heals anything changed behind Koala's back.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from common.hostcmd import Runner, SubprocessRunner
from common.messages.cc_nc import NetConfig
from common.messages.network import NetworkInfo, NetworkRule, PublicAddress
from services.cluster_controller.network.addressing import mac_for_instance, max_vlan, subnet_for_vlan
from services.cluster_controller.network.apply import ALL_PARTS, RULES_ONLY, Applier, ApplyReport
from services.cluster_controller.network.desired import (
    DesiredState,
    InstanceEntry,
    NetworkSpec,
    bridge_name,
    compute,
)
from services.cluster_controller.network.dhcp import DhcpServer
from services.cluster_controller.network.settings import VnetError, VnetSettings, parse_macmap
from services.cluster_controller.network.store import NetworkStore

log = logging.getLogger("koala.cc.network")


def _ip_int(text: str) -> int:
    try:
        return int.from_bytes(socket.inet_aton(text), "big")
    except OSError:
        return -1


class NetworkRequestError(Exception):
    """A request the network cannot honour: (status, code, message) for the RPC answer."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class NetworkManager:
    def __init__(
        self,
        settings: VnetSettings,
        state_dir: Path,
        runner: Runner | None = None,
        applier: Applier | None = None,
    ):
        self.settings = settings
        self.dir = Path(state_dir) / "network"
        self.runner = runner or SubprocessRunner(settings.KOALA_VNET_NETNS)
        self.applier = applier or Applier(
            self.runner, DhcpServer(self.runner, self.dir, settings.VNET_DHCPDAEMON, settings.VNET_DHCPUSER)
        )
        self.networks: dict[str, NetworkSpec] = {}
        self.instances: dict[str, InstanceEntry] = {}
        self.addresses: dict[str, tuple[str, str]] = {}  # public ip -> (private ip, instance id)
        self.store: NetworkStore | None = None
        self.last_report: ApplyReport | None = None
        self.last_error = ""
        self._lock = asyncio.Lock()
        self._open_lock = asyncio.Lock()
        self._wanted = 0
        self._pending: set[str] = set()
        self._applied = 0
        self._loop_task: asyncio.Task[None] | None = None
        # The CC's live instances (id -> NetConfig), if the service provides them: the reconcile loop syncs the
        # DHCP entries with them, so an instance that ended loses its entry even if nobody said so.
        self.instance_source: Callable[[], dict[str, NetConfig]] | None = None

    # --- life ---------------------------------------------------------------------------------------
    async def open(self) -> None:
        """Load the stored state (idempotent). Every operation calls it, so early callers are fine."""
        async with self._open_lock:
            if self.store is not None:
                return
            await asyncio.to_thread(self.dir.mkdir, parents=True, exist_ok=True)
            self.store = await NetworkStore.open(self.dir / "network.db")
            self.networks, self.instances, self.addresses = await self.store.load()

    async def start(self) -> None:
        """Open, restore the network from the database, and start the reconcile loop."""
        await self.open()
        try:
            await self.converge()
        except NetworkRequestError as err:  # keep serving: the reconcile loop retries
            log.error("network restore failed: %s", err.message)
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._reconcile_loop(), name="network reconcile")

    async def stop(self) -> None:
        """Stop managing; the network stays as it is (guests keep their connectivity while the CC is down)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        async with self._lock:
            if self.store is not None:
                await self.store.close()
                self.store = None

    async def teardown(self) -> None:
        """Remove everything Koala set up (chains, hooks, devices, addresses, the DHCP server)."""
        async with self._lock:
            desired = compute(self.settings, [], [], {})
            empty = DesiredState(mode=desired.mode, ownership=desired.ownership)
            await self.applier.apply(empty)

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.KOALA_VNET_RECONCILE_SECONDS)
            try:
                if self.instance_source is not None:
                    await self.sync_instances(self.instance_source())
                else:
                    await self.converge()
            except NetworkRequestError as err:
                log.error("network reconcile failed: %s", err.message)
            except Exception:
                log.exception("network reconcile failed")

    # --- converging ----------------------------------------------------------------------------------
    def desired(self) -> DesiredState:
        assignments = {public: private for public, (private, _) in self.addresses.items()}
        return compute(self.settings, self.networks.values(), self.instances.values(), assignments)

    async def converge(self, parts: frozenset[str] = ALL_PARTS) -> ApplyReport | None:
        """Apply the current desired state (`parts`: what the change can affect, see Applier.apply); returns None
        when a concurrent apply already covered it."""
        self._wanted += 1
        self._pending |= parts
        target = self._wanted
        async with self._lock:
            if self._applied >= target:
                return None
            generation = self._wanted
            parts, self._pending = frozenset(self._pending), set()
            if self._applied and self.settings.VNET_MODE == "SYSTEM":
                self._applied = generation  # nothing on the CC in SYSTEM: the first apply cleaned up, if anything
                return None
            try:
                desired = self.desired()
                report = await self.applier.apply(desired, parts)
            except Exception as err:
                self._pending |= parts  # not done: the next converge does it
                if self.settings.VNET_MODE == "SYSTEM":  # only a clean-up of earlier modes: never block launches
                    log.warning("network clean-up for SYSTEM mode failed: %s", err)
                    self._applied = generation
                    return None
                self._fail(err)
            self._applied = generation
            self.last_report, self.last_error = report, ""
            return report

    def _fail(self, err: Exception) -> NoReturn:
        self.last_error = str(err)
        if isinstance(err, VnetError):  # the request asks for something the configuration cannot give
            raise NetworkRequestError(400, "InvalidParameterValue", str(err))
        log.error("network apply failed: %s", err)  # a command failed: the host is not as configured
        raise NetworkRequestError(503, "NetworkApplyFailed", str(err))

    # --- networks ------------------------------------------------------------------------------------
    def _check_vlan(self, name: str, vlan: int) -> None:
        if self.settings.managed:
            try:
                subnet_for_vlan(self.settings.vnet_subnet, self.settings.VNET_ADDRSPERNET, vlan)
            except VnetError as err:
                raise NetworkRequestError(400, "InvalidParameterValue", str(err)) from None
        for other in self.networks.values():
            if other.vlan == vlan and other.name != name:
                raise NetworkRequestError(
                    409, "NetworkConflict", f"VLAN {vlan} belongs to network {other.name!r}; stop it first"
                )

    async def start_network(self, name: str, vlan: int) -> NetworkInfo:
        await self.open()
        self._check_vlan(name, vlan)
        current = self.networks.get(name)
        if current is None or current.vlan != vlan:
            spec = NetworkSpec(name, vlan, current.rules if current else ())
            assert self.store is not None
            self.networks[name] = spec  # memory first, then the database, in the same order for every change
            await self.store.put_network(spec)
        await self.converge()
        return self.info(self.networks[name])

    async def configure_network(self, name: str, vlan: int, rules: list[NetworkRule]) -> NetworkInfo:
        await self.open()
        self._check_vlan(name, vlan)
        spec = NetworkSpec(name, vlan, tuple(rules))
        current = self.networks.get(name)
        if current != spec:
            assert self.store is not None
            self.networks[name] = spec
            await self.store.put_network(spec)
        # Only the rules changed: only iptables to look at (the reconcile loop checks everything else).
        await self.converge(RULES_ONLY if current is not None and current.vlan == vlan else ALL_PARTS)
        return self.info(spec)

    async def stop_network(self, name: str, vlan: int) -> NetworkInfo:
        await self.open()
        spec = self.networks.get(name)
        if spec is None:
            return NetworkInfo(name=name, vlan=vlan)  # already stopped: idempotent
        assert self.store is not None
        del self.networks[name]
        await self.store.delete_network(name)
        await self.converge()
        info = self.info(spec)
        return info.model_copy(update={"instances": []})

    def info(self, spec: NetworkSpec) -> NetworkInfo:
        info = NetworkInfo(name=spec.name, vlan=spec.vlan, rules=list(spec.rules))
        if self.settings.managed:
            subnet = subnet_for_vlan(self.settings.vnet_subnet, self.settings.VNET_ADDRSPERNET, spec.vlan)
            info.subnet, info.router = str(subnet.network), str(subnet.router)
            info.bridge = (
                bridge_name(spec.vlan) if self.settings.VNET_MODE == "MANAGED" else (self.settings.VNET_PRIVINTERFACE)
            )
            low, high = int(subnet.network.network_address), int(subnet.network.broadcast_address)
            info.instances = sorted(
                e.instance_id for e in self.instances.values() if e.ip and low <= _ip_int(e.ip) <= high
            )
        return info

    async def describe_networks(self, names: list[str]) -> list[NetworkInfo]:
        await self.open()
        wanted = set(names)
        return [
            self.info(s) for s in sorted(self.networks.values(), key=lambda s: s.vlan) if not wanted or s.name in wanted
        ]

    def vlan_range(self) -> tuple[int, int]:
        if not self.settings.managed:
            return (0, 0)
        return (2, max_vlan(self.settings.vnet_subnet, self.settings.VNET_ADDRSPERNET))

    # --- addresses -----------------------------------------------------------------------------------
    def _require_managed(self, what: str) -> None:
        if not self.settings.managed:
            raise NetworkRequestError(
                400,
                "UnsupportedOperation",
                f"{what} needs VNET_MODE MANAGED or MANAGED-NOVLAN (it is {self.settings.VNET_MODE})",
            )

    async def assign_address(self, public_ip: str, private_ip: str, instance_id: str) -> PublicAddress:
        await self.open()
        self._require_managed("elastic IPs")
        if ipaddress.IPv4Address(public_ip) not in self.settings.public_pool():
            raise NetworkRequestError(400, "InvalidAddress.NotFound", f"{public_ip} is not in VNET_PUBLICIPS")
        if not private_ip:
            entry = self.instances.get(instance_id)
            if entry is None or not entry.ip:
                raise NetworkRequestError(
                    400, "InvalidInstanceID.NotFound", f"the CC has no network entry for {instance_id}"
                )
            private_ip = entry.ip
        if ipaddress.IPv4Address(private_ip) not in self.settings.vnet_subnet:
            raise NetworkRequestError(
                400, "InvalidParameterValue", f"{private_ip} is not an instance address (outside VNET_SUBNET)"
            )
        if not instance_id:
            instance_id = next((e.instance_id for e in self.instances.values() if e.ip == private_ip), "")
        if self.addresses.get(public_ip) != (private_ip, instance_id):
            assert self.store is not None
            for other, (priv, _) in list(self.addresses.items()):
                if priv == private_ip:
                    del self.addresses[other]  # one public address per instance
            self.addresses[public_ip] = (private_ip, instance_id)
            await self.store.put_address(public_ip, private_ip, instance_id)
        await self.converge()
        return PublicAddress(public_ip=public_ip, private_ip=private_ip, instance_id=instance_id)

    async def unassign_address(self, public_ip: str) -> PublicAddress:
        await self.open()
        self._require_managed("elastic IPs")
        if public_ip in self.addresses:
            assert self.store is not None
            del self.addresses[public_ip]
            await self.store.delete_addresses([public_ip])
            await self.converge()
        return PublicAddress(public_ip=public_ip)

    async def describe_public_addresses(self) -> tuple[bool, list[PublicAddress]]:
        await self.open()
        if not self.settings.managed:
            return False, []
        out = []
        for address in self.settings.public_ips():
            private_ip, instance_id = self.addresses.get(str(address), ("", ""))
            out.append(PublicAddress(public_ip=str(address), private_ip=private_ip, instance_id=instance_id))
        return True, out

    # --- instances (called by the CC's own RunInstances/Terminate paths) -----------------------------
    def fill_net(self, instance_id: str, net: NetConfig) -> NetConfig:
        """Complete an instance's network parameters for this mode: MAC (d0:0d:<id>), private IP from the VLAN and
        network index (MANAGED*) or a free VNET_MACMAP pair (STATIC), and the bridge the NC should use."""
        update: dict[str, object] = {}
        mode = self.settings.VNET_MODE
        if mode == "STATIC":
            if not net.private_ip:
                used = {e.ip for e in self.instances.values() if e.instance_id != instance_id}
                pair = next(
                    ((m, str(ip)) for m, ip in parse_macmap(self.settings.VNET_MACMAP) if str(ip) not in used), None
                )
                if pair is None:
                    raise NetworkRequestError(503, "InsufficientAddressCapacity", "every VNET_MACMAP pair is in use")
                update["private_mac"], update["private_ip"] = pair
            update["public_ip"] = update.get("private_ip", net.private_ip)
        else:
            if not net.private_mac:
                try:
                    update["private_mac"] = mac_for_instance(instance_id)
                except VnetError as err:
                    raise NetworkRequestError(400, "InvalidParameterValue", str(err)) from None
            if self.settings.managed:
                try:
                    subnet = subnet_for_vlan(self.settings.vnet_subnet, self.settings.VNET_ADDRSPERNET, net.vlan)
                    if not net.private_ip:
                        update["private_ip"] = str(subnet.host(net.network_index))
                    elif ipaddress.IPv4Address(net.private_ip) not in subnet.network:
                        raise VnetError(f"{net.private_ip} is outside VLAN {net.vlan}'s subnet {subnet.network}")
                except VnetError as err:
                    raise NetworkRequestError(400, "InvalidParameterValue", str(err)) from None
                if mode == "MANAGED":
                    update["bridge"] = bridge_name(net.vlan)
        return net.model_copy(update=update)

    async def add_instance(self, instance_id: str, net: NetConfig) -> NetConfig:
        """Record an instance's network entry (DHCP host, elastic IP if it has one) and apply."""
        await self.open()
        net = self.fill_net(instance_id, net)
        entry = InstanceEntry(instance_id, net.private_mac.lower(), net.private_ip, net.vlan)
        if self.instances.get(instance_id) != entry:
            assert self.store is not None
            self.instances[instance_id] = entry
            await self.store.put_instances([entry])
        if self.settings.managed and net.public_ip and net.public_ip != net.private_ip:
            await self.assign_address(net.public_ip, net.private_ip, instance_id)
        else:
            await self.converge()
        return net

    async def add_instances(self, nets: dict[str, NetConfig]) -> dict[str, NetConfig]:
        """Several at once (one apply): the completed NetConfig of each."""
        await self.open()
        filled = {instance_id: self.fill_net(instance_id, net) for instance_id, net in nets.items()}
        entries = [InstanceEntry(i, n.private_mac.lower(), n.private_ip, n.vlan) for i, n in filled.items()]
        changed = [e for e in entries if self.instances.get(e.instance_id) != e]
        if changed:
            assert self.store is not None
            self.instances.update({e.instance_id: e for e in changed})
            await self.store.put_instances(changed)
        for instance_id, net in filled.items():
            if self.settings.managed and net.public_ip and net.public_ip != net.private_ip:
                await self.assign_address(net.public_ip, net.private_ip, instance_id)
        await self.converge()
        return filled

    async def remove_instances(self, instance_ids: list[str]) -> None:
        """Forget instances (one apply for all): DHCP entries and elastic IPs mapped to their addresses."""
        await self.open()
        entries = [self.instances.pop(i) for i in instance_ids if i in self.instances]
        if not entries:
            return
        assert self.store is not None
        gone = {e.ip for e in entries if e.ip}
        stale = [pub for pub, (priv, _) in self.addresses.items() if priv in gone] if self.settings.managed else []
        for pub in stale:
            del self.addresses[pub]
        await self.store.delete_instances([entry.instance_id for entry in entries])
        if stale:
            await self.store.delete_addresses(stale)
        await self.converge()

    async def remove_instance(self, instance_id: str) -> None:
        """Forget an instance: its DHCP entry and any elastic IP mapped to its address."""
        await self.remove_instances([instance_id])

    async def sync_instances(self, nets: dict[str, NetConfig]) -> None:
        """Replace the whole instance list (e.g. after a restart, from what the NCs report)."""
        await self.open()
        entries = {}
        for instance_id, net in nets.items():
            try:
                filled = self.fill_net(instance_id, net)
            except NetworkRequestError as err:  # one bad entry must not stop the others' DHCP
                log.warning("instance %s has no usable network entry: %s", instance_id, err.message)
                continue
            entries[instance_id] = InstanceEntry(
                instance_id, filled.private_mac.lower(), filled.private_ip, filled.vlan
            )
        if entries != self.instances:
            assert self.store is not None
            self.instances = entries
            await self.store.put_instances(list(entries.values()), replace_all=True)
        await self.converge()
