"""The CC's network state in its own SQLite database (network.db in the CC's state directory)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiosqlite

from common.db import open_db
from common.messages.network import NetworkRule
from services.cluster_controller.network.desired import InstanceEntry, NetworkSpec


class NetworkStore:
    def __init__(self, db: aiosqlite.Connection):
        self.db = db
        # One write at a time: a write is several statements and a commit, and two must not interleave.
        self.lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> NetworkStore:
        return cls(await open_db(path, "services.cluster_controller.network.migrations"))

    async def close(self) -> None:
        await self.db.close()

    async def load(self) -> tuple[dict[str, NetworkSpec], dict[str, InstanceEntry], dict[str, tuple[str, str]]]:
        networks: dict[str, NetworkSpec] = {}
        async with self.db.execute("SELECT name, vlan, rules FROM networks") as cursor:
            async for row in cursor:
                rules = tuple(NetworkRule.model_validate(r) for r in json.loads(row["rules"]))
                networks[row["name"]] = NetworkSpec(row["name"], row["vlan"], rules)
        instances: dict[str, InstanceEntry] = {}
        async with self.db.execute("SELECT instance_id, mac, ip, vlan FROM instance_nets") as cursor:
            async for row in cursor:
                instances[row["instance_id"]] = InstanceEntry(row["instance_id"], row["mac"], row["ip"], row["vlan"])
        addresses: dict[str, tuple[str, str]] = {}
        async with self.db.execute("SELECT public_ip, private_ip, instance_id FROM addresses") as cursor:
            async for row in cursor:
                addresses[row["public_ip"]] = (row["private_ip"], row["instance_id"])
        return networks, instances, addresses

    async def put_network(self, spec: NetworkSpec) -> None:
        async with self.lock:
            rules = json.dumps([rule.model_dump() for rule in spec.rules])
            await self.db.execute("DELETE FROM networks WHERE vlan = ? AND name != ?", (spec.vlan, spec.name))
            await self.db.execute(
                "INSERT INTO networks(name, vlan, rules, updated_at) VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE "
                "SET vlan = excluded.vlan, rules = excluded.rules, updated_at = excluded.updated_at",
                (spec.name, spec.vlan, rules, time.time()),
            )
            await self.db.commit()

    async def delete_network(self, name: str) -> None:
        async with self.lock:
            await self.db.execute("DELETE FROM networks WHERE name = ?", (name,))
            await self.db.commit()

    async def put_instances(self, entries: list[InstanceEntry], replace_all: bool = False) -> None:
        async with self.lock:
            if replace_all:
                await self.db.execute("DELETE FROM instance_nets")
            await self.db.executemany(
                "INSERT OR REPLACE INTO instance_nets(instance_id, mac, ip, vlan) VALUES (?, ?, ?, ?)",
                [(e.instance_id, e.mac, e.ip, e.vlan) for e in entries],
            )
            await self.db.commit()

    async def delete_instances(self, instance_ids: list[str]) -> None:
        async with self.lock:
            await self.db.executemany("DELETE FROM instance_nets WHERE instance_id = ?", [(i,) for i in instance_ids])
            await self.db.commit()

    async def put_address(self, public_ip: str, private_ip: str, instance_id: str) -> None:
        async with self.lock:
            await self.db.execute(
                "DELETE FROM addresses WHERE public_ip = ? OR private_ip = ?", (public_ip, private_ip)
            )
            await self.db.execute(
                "INSERT INTO addresses(public_ip, private_ip, instance_id) VALUES (?, ?, ?)",
                (public_ip, private_ip, instance_id),
            )
            await self.db.commit()

    async def delete_addresses(self, public_ips: list[str]) -> None:
        async with self.lock:
            await self.db.executemany("DELETE FROM addresses WHERE public_ip = ?", [(ip,) for ip in public_ips])
            await self.db.commit()
