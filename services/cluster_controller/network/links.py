"""Devices and addresses: diff the desired ones against `ip -j -d addr show` and plan idempotent `ip` commands.

Only devices and addresses Koala owns (see desired.Ownership) are created or removed; a device Koala needs but
does not create (VNET_PRIVINTERFACE, VNET_PUBINTERFACE) must exist, or planning fails with a clear error.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

from services.cluster_controller.network.desired import DesiredState, Link
from services.cluster_controller.network.settings import VnetError


@dataclass
class LiveDevice:
    name: str
    kind: str = ""  # linkinfo's info_kind: "bridge", "vlan", "veth", ...
    master: str = ""
    parent: str = ""
    vlan_id: int = 0
    up: bool = False
    addresses: list[str] = field(default_factory=list)  # "a.b.c.d/len", as desired states write them


def parse_ip_json(text: str) -> dict[str, LiveDevice]:
    devices: dict[str, LiveDevice] = {}
    for entry in json.loads(text or "[]"):
        info: dict[str, Any] = entry.get("linkinfo") or {}
        data: dict[str, Any] = info.get("info_data") or {}
        name = entry["ifname"]
        devices[name] = LiveDevice(
            name=name,
            kind=info.get("info_kind", ""),
            master=entry.get("master", ""),
            parent=entry.get("link", "") or "",
            vlan_id=int(data.get("id", 0) or 0),
            up="UP" in entry.get("flags", []),
            addresses=[
                f"{a['local']}/{a['prefixlen']}" for a in entry.get("addr_info", []) if a.get("family") == "inet"
            ],
        )
    return devices


def _create(link: Link) -> list[str]:
    if link.kind == "bridge":
        return ["ip", "link", "add", link.name, "type", "bridge"]
    return ["ip", "link", "add", "link", link.parent, "name", link.name, "type", "vlan", "id", str(link.vlan_id)]


def plan(desired: DesiredState, live: dict[str, LiveDevice]) -> list[list[str]]:
    """Commands, in order, that make devices and addresses match; [] when they already do."""
    commands: list[list[str]] = []
    own = desired.ownership
    wanted = {link.name: link for link in desired.links}
    # Stale devices first: removing a device removes its addresses too.
    for name, device in sorted(live.items()):
        if name not in wanted and own.owns_link(name) and device.kind in ("bridge", "vlan"):
            commands.append(["ip", "link", "del", name])
    live = {
        k: v for k, v in live.items() if not (k not in wanted and own.owns_link(k) and v.kind in ("bridge", "vlan"))
    }
    for link in desired.links:  # bridges come before the VLAN devices enslaved to them
        current: LiveDevice | None = live.get(link.name)
        if current is not None and (
            current.kind != link.kind
            or (link.kind == "vlan" and (current.vlan_id != link.vlan_id or current.parent != link.parent))
        ):
            commands.append(["ip", "link", "del", link.name])  # same name, wrong device: replace it
            current = None
        if current is None:
            if link.parent and link.parent not in live:
                raise VnetError(f"interface {link.parent} does not exist (VNET_PRIVINTERFACE)")
            commands.append(_create(link))
        if link.master and (current is None or current.master != link.master):
            commands.append(["ip", "link", "set", link.name, "master", link.master])
        if current is None or not current.up:
            commands.append(["ip", "link", "set", link.name, "up"])
    for name, cidrs in desired.addresses.items():
        if name not in live and name not in wanted:
            raise VnetError(f"interface {name} does not exist")
        have = set(live[name].addresses) if name in live else set()
        commands += [["ip", "addr", "add", cidr, "brd", "+", "dev", name] for cidr in cidrs if cidr not in have]
    for name, device in sorted(live.items()):
        want = set(desired.addresses.get(name, ()))
        for address in device.addresses:
            if address not in want and own.owns_address(name, ipaddress.IPv4Interface(address)):
                commands.append(["ip", "addr", "del", address, "dev", name])
    return commands
