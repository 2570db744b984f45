"""Network resources for MANAGED modes: one VLAN per network "<account>-<group>" (as Eucalyptus named them) and
a network index per instance inside it (hosts 2 .. addrs_per_net-2; 0 network, 1 router, last broadcast).

VLANs are persisted; indexes are derived from the live instances at start, so nothing leaks across a crash.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.cloud_controller.compute.errors import ComputeError

if TYPE_CHECKING:
    from services.cloud_controller.database import Database


class Networks:
    def __init__(self, db: Database, vlan_min: int = 10, vlan_max: int = 4095, addrs_per_net: int = 32):
        self.db = db
        self.vlan_min, self.vlan_max, self.addrs_per_net = vlan_min, vlan_max, addrs_per_net
        self.vlans: dict[str, int] = {}
        self.used: dict[int, set[int]] = {}  # vlan -> indexes in use

    async def load(self) -> None:
        for row in await self.db.fetchall("SELECT name, vlan FROM networks"):
            self.vlans[row[0]] = row[1]

    @staticmethod
    def name(owner_id: str, group: str) -> str:
        return f"{owner_id}-{group}"

    def vlan_for(self, name: str) -> tuple[int, bool]:
        """The network's VLAN, allocating one if needed; (vlan, newly allocated)."""
        if name in self.vlans:
            return self.vlans[name], False
        taken = set(self.vlans.values())
        for vlan in range(self.vlan_min, self.vlan_max + 1):
            if vlan not in taken:
                self.vlans[name] = vlan
                return vlan, True
        raise ComputeError("InsufficientInstanceCapacity", "Not enough resources available: no free VLAN", 503)

    def drop_vlan(self, name: str) -> None:
        self.vlans.pop(name, None)

    def mark(self, vlan: int, index: int) -> None:
        if vlan >= 0 and index >= 0:
            self.used.setdefault(vlan, set()).add(index)

    def take_index(self, vlan: int) -> int:
        used = self.used.setdefault(vlan, set())
        for index in range(2, self.addrs_per_net - 1):
            if index not in used:
                used.add(index)
                return index
        raise ComputeError(
            "InsufficientInstanceCapacity", f"Not enough resources available: network {vlan} is full", 503
        )

    def give_back(self, vlan: int, index: int) -> None:
        if vlan in self.used:
            self.used[vlan].discard(index)

    async def save_vlan(self, name: str) -> None:
        if name in self.vlans:
            await self.db.execute(
                "INSERT INTO networks(name, vlan) VALUES (?, ?) ON CONFLICT DO NOTHING", (name, self.vlans[name])
            )
        else:
            await self.db.execute("DELETE FROM networks WHERE name = ?", (name,))
