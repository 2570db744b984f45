"""POWERSAVE's power side, as pure functions: which idle nodes to power down, and how to wake one.

As in Eucalyptus: a node with no instances for POWER_IDLETHRESH seconds is sent PowerDown and becomes
ASLEEP; when placement picks an ASLEEP node, it is woken with Wake-on-LAN and is WAKING until it answers, or
DOWN after POWER_WAKETHRESH. A node whose MAC address is unknown is never powered down: it could not be woken.
The wake is a `WakePlan`: the magic packet and, for the command methods, the exact argv to run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from services.cluster_controller.placement import NodeState

_MAC = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$")
WOL_PORT = 9
WAKE_METHODS = ("udp", "etherwake", "wakeonlan", "powerwake")


class WakeError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class PowerView:
    """What the power decision needs of one node."""

    key: str
    state: NodeState
    instances: int  # instances placed on it (including in-flight reservations)
    idle_since: float | None  # when it last became empty; None while busy
    mac: str = ""


def normalize_mac(mac: str) -> str:
    value = mac.strip().lower()
    if not _MAC.match(value):
        raise WakeError(f"not a MAC address: {mac!r}")
    return value.replace("-", ":")


def magic_packet(mac: str) -> bytes:
    """Wake-on-LAN magic packet: six 0xFF bytes, then the MAC sixteen times (102 bytes)."""
    raw = bytes.fromhex(normalize_mac(mac).replace(":", ""))
    return b"\xff" * 6 + raw * 16


@dataclass(frozen=True)
class WakePlan:
    mac: str
    packet: bytes
    argv: tuple[str, ...] = ()  # empty for "udp": the CC sends the packet itself
    broadcast: str = "255.255.255.255"
    port: int = WOL_PORT


def wake_plan(mac: str, method: str = "udp", interface: str = "", broadcast: str = "255.255.255.255") -> WakePlan:
    """How to wake the node with this MAC address, by `method`:
    udp: the magic packet as a UDP broadcast to port 9; etherwake: `etherwake -i IFACE MAC` (raw Ethernet);
    wakeonlan: `wakeonlan -i BROADCAST MAC`; powerwake: `powerwake MAC` (what Eucalyptus ran)."""
    mac = normalize_mac(mac)
    packet = magic_packet(mac)
    if method == "udp":
        return WakePlan(mac, packet, (), broadcast)
    if method == "etherwake":
        if not interface:
            raise WakeError("etherwake needs an interface (KOALA_WOL_INTERFACE)")
        return WakePlan(mac, packet, ("etherwake", "-i", interface, mac), broadcast)
    if method == "wakeonlan":
        return WakePlan(mac, packet, ("wakeonlan", "-i", broadcast, mac), broadcast)
    if method == "powerwake":
        return WakePlan(mac, packet, ("powerwake", mac), broadcast)
    raise WakeError(f"unknown wake method {method!r}; one of {', '.join(WAKE_METHODS)}")


def nodes_to_power_down(nodes: Iterable[PowerView], now: float, idle_threshold: float) -> list[str]:
    """UP nodes empty for at least `idle_threshold` seconds that can be woken again."""
    return [
        node.key
        for node in nodes
        if node.state is NodeState.UP
        and node.instances == 0
        and node.idle_since is not None
        and now - node.idle_since >= idle_threshold
        and node.mac
    ]


def waking_timed_out(waking_since: Mapping[str, float], now: float, wake_threshold: float) -> list[str]:
    """WAKING nodes that did not answer within POWER_WAKETHRESH: they become DOWN."""
    return [key for key, since in waking_since.items() if now - since >= wake_threshold]
