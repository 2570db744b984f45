"""Security-group networks on the CCs (MANAGED modes): before a launch, the instance's network gets its full
rule set (ConfigureNetwork, level-triggered: the CC replaces what it had); after any change of a group's rules,
every zone with live instances in that network gets the new set. Rules come from the security groups part of
the CLC through `rules_for`, and are translated into common/messages/network.py's NetworkRule."""

from __future__ import annotations

import logging
import time
import typing
from collections.abc import Awaitable, Callable
from typing import Any

from common.messages.network import ConfigureNetworkRequest, NetworkRule, Protocol
from common.rpc import PeerNotReached, PeerUnreachable, RpcError
from services.cloud_controller.compute.cc_client import ClusterClient
from services.cloud_controller.compute.errors import ComputeError
from services.cloud_controller.compute.networks import Networks
from services.cloud_controller.compute.store import Store

log = logging.getLogger("koala.clc.netsync")
# Seconds a remote zone's CC is taken to still hold a rule set it acknowledged (it writes each set before it
# answers): a launch within that time does not send the same set again, one round trip less before a burst launch.
REMOTE_ACK_FRESH = 30.0
RulesFor = Callable[[str, str], Awaitable[list[Any] | None]]  # (owner, group name) -> rules, None if no group
PROTOCOLS: dict[str, Protocol] = {
    "tcp": "tcp",
    "udp": "udp",
    "icmp": "icmp",
    "-1": "all",
    "6": "tcp",
    "17": "udp",
    "1": "icmp",
}


def translate(rules: list[Any]) -> list[NetworkRule]:
    """The groups part's rules -> the CC's NetworkRule (protocols the CC cannot filter are left out)."""
    out = []
    for rule in rules:
        protocol = PROTOCOLS.get(str(rule.protocol))
        if protocol is None:
            continue
        cidrs = [rule.cidr] if rule.cidr else []
        sources = (
            [Networks.name(rule.source_owner_id, rule.source_group_name)]
            if rule.source_group_id and rule.source_owner_id and rule.source_group_name
            else []
        )
        if not cidrs and not sources:
            continue
        ports = (rule.from_port, rule.to_port) if protocol != "all" else (-1, -1)
        try:
            out.append(
                NetworkRule(
                    protocol=protocol, from_port=ports[0], to_port=ports[1], cidrs=cidrs, source_networks=sources
                )
            )
        except ValueError as err:
            log.warning("rule %s left out of the network: %s", rule, err)
    return out


class NetworkSyncEngine(typing.Protocol):  # (typing's: `Protocol` here is the network rules' protocol type)
    """What the network sync asks of the engine it is part of (engine.Compute)."""

    def remote(self, zone: str) -> bool: ...


class NetworkSync:
    """The security groups' rules (`rules_for`) pushed to the CCs (`cc`) for the networks (`networks`) of the
    instances in the engine's records (`store`)."""

    def __init__(
        self, engine: NetworkSyncEngine, store: Store, cc: ClusterClient, networks: Networks, rules_for: RulesFor
    ):
        self.engine, self.store, self.cc, self.networks, self.rules_for = engine, store, cc, networks, rules_for
        self._acknowledged: dict[tuple[str, str], tuple[float, ConfigureNetworkRequest]] = {}  # remote zones'

    def forget_zone(self, zone: str, url: str | None = None) -> None:
        """The zone's CC changed (registered again, or gone): what it acknowledged is sent again."""
        for key in [k for k in self._acknowledged if k[0] == zone]:
            del self._acknowledged[key]

    async def configure(self, zone: str, owner_id: str, group: str, vlan: int, reuse: bool = False) -> None:
        """Give the network its rule set on the zone's CC; ComputeError if the CC refuses or is unreachable.
        `reuse`: not if the zone is remote and acknowledged this very set less than REMOTE_ACK_FRESH ago."""
        rules = await self.rules_for(owner_id, group) or []
        request = ConfigureNetworkRequest(name=Networks.name(owner_id, group), vlan=vlan, rules=translate(rules))
        key = (zone, request.name)
        known = self._acknowledged.pop(key, None)
        if reuse and known is not None and known[1] == request and time.monotonic() - known[0] < REMOTE_ACK_FRESH:
            self._acknowledged[key] = known
            return
        try:
            await self.cc.configure_network(zone, request)
        except PeerNotReached:
            raise  # the zone is down, not short of anything: the caller says so
        except (RpcError, PeerUnreachable) as err:
            raise ComputeError(
                "InsufficientInstanceCapacity",
                f"The network of {group} could not be set up in {zone}: {err.message}",
                503,
            ) from None
        if self.engine.remote(zone):
            self._acknowledged[key] = (time.monotonic(), request)

    async def configure_launch(self, zone: str, owner_id: str, groups: list[str], vlan: int) -> None:
        """Before a launch: the instances' network (their first group's) gets its rules; a remote zone, which gives
        the instances every group they name (one remote group per local group), gets each group's rules too (the
        VLAN means nothing there: the first group's is sent)."""
        await self.configure(zone, owner_id, groups[0], vlan, reuse=True)
        if self.engine.remote(zone):
            for group in dict.fromkeys(groups[1:]):
                await self.configure(zone, owner_id, group, vlan, reuse=True)

    async def group_changed(self, owner_id: str, group_name: str) -> None:
        """Push a group's new rule set to every zone where its network has live instances, and to every remote
        zone with a live instance in the group."""
        name = Networks.name(owner_id, group_name)
        vlan = self.networks.vlans.get(name)
        zones: dict[str, int] = {}  # zone -> the VLAN to name
        for instance in self.store.instances.values():
            if not instance.live or instance.owner_id != owner_id:
                continue
            if vlan is not None and instance.vlan == vlan:
                zones[instance.zone] = vlan
            elif self.engine.remote(instance.zone) and instance.vlan >= 0:
                reservation = self.store.reservations.get(instance.reservation_id)
                if reservation is not None and group_name in reservation.groups:
                    zones.setdefault(instance.zone, instance.vlan)
        for zone, zone_vlan in sorted(zones.items()):
            try:
                await self.configure(zone, owner_id, group_name, zone_vlan)
            except (ComputeError, PeerNotReached) as err:
                log.warning("rules of %s not pushed to %s (the next change or launch retries): %s", name, zone, err)
