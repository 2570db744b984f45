"""The CC's database: nodes, reservations, instances, migrations and maintenance marks (aiosqlite, WAL)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import aiosqlite

from common.db import Statement, open_db, write_together
from common.messages.cc_nc import LaunchSpec, NetConfig, VmType
from common.messages.migration import MigrationTarget
from services.cluster_controller.model import Instance, Migration, Node
from services.cluster_controller.placement import NodeState
from services.cluster_controller.reservations import Reservations

_INSTANCE_COLUMNS = (
    "instance_id, reservation_id, owner_id, node_url, vm, launch_index, net, state, detail, reason,"
    " launch_time, confirmed, terminating, tried, ended_at"
)


def _instance_row(instance: Instance) -> tuple[object, ...]:
    return (
        instance.instance_id,
        instance.reservation_id,
        instance.owner_id,
        instance.node_url,
        instance.vm.model_dump_json(),
        instance.launch_index,
        instance.net.model_dump_json(),
        instance.state,
        instance.detail,
        instance.reason,
        instance.launch_time,
        int(instance.confirmed_at is not None),
        int(instance.terminating),
        json.dumps(instance.tried),
        instance.ended_at,
    )


def _upsert(instances: Iterable[Instance]) -> Statement:
    return (
        f"INSERT OR REPLACE INTO instances({_INSTANCE_COLUMNS}) VALUES ({', '.join('?' * 15)})",
        [_instance_row(i) for i in instances],
    )


class Store:
    def __init__(self, db: aiosqlite.Connection):
        self.db = db
        self.reservations = Reservations(db)

    @classmethod
    async def open(cls, path: Path) -> Store:
        return cls(await open_db(path, "services.cluster_controller.migrations"))

    async def close(self) -> None:
        await self.db.close()

    # --- nodes ----------------------------------------------------------------------------------------
    async def load_nodes(self) -> list[Node]:
        async with self.db.execute("SELECT * FROM nodes ORDER BY rowid") as cursor:
            rows = await cursor.fetchall()
        nodes = []
        for row in rows:
            node = Node(url=row["url"], source=row["source"], node_id=row["node_id"], mac=row["mac"])
            node.memory_max_mb, node.disk_max_gb, node.cores_max = (
                row["memory_max_mb"],
                row["disk_max_gb"],
                row["cores_max"],
            )
            # A node that was asleep stays asleep (it is not polled); the others are DOWN until they answer.
            node.set_state(NodeState.ASLEEP if row["state"] == NodeState.ASLEEP else NodeState.DOWN)
            nodes.append(node)
        return nodes

    async def save_node(self, node: Node) -> None:
        await self.db.execute(
            "INSERT INTO nodes(url, node_id, source, mac, state, memory_max_mb, disk_max_gb, cores_max, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(url) DO UPDATE SET node_id=excluded.node_id,"
            " source=excluded.source, mac=excluded.mac, state=excluded.state, memory_max_mb=excluded.memory_max_mb,"
            " disk_max_gb=excluded.disk_max_gb, cores_max=excluded.cores_max, updated_at=excluded.updated_at",
            (
                node.url,
                node.node_id,
                node.source,
                node.mac,
                node.state.value,
                node.memory_max_mb,
                node.disk_max_gb,
                node.cores_max,
                time.time(),
            ),
        )
        await self.db.commit()

    async def delete_node(self, url: str) -> None:
        await self.db.execute("DELETE FROM nodes WHERE url = ?", (url,))
        await self.db.commit()

    # --- reservations and instances -----------------------------------------------------------------------
    async def add_reservation(self, reservation_id: str, spec: LaunchSpec, instances: list[Instance]) -> None:
        """One transaction: the launch spec and its placed instances, before anything is sent to a node."""
        await self.reservations.add(reservation_id, spec, _upsert(instances))

    async def save_instances(self, instances: Iterable[Instance]) -> None:
        await write_together(self.db, [_upsert(instances)])  # one hop, as the remote zone's store saves

    async def load_instances(self) -> list[Instance]:
        async with self.db.execute(f"SELECT {_INSTANCE_COLUMNS} FROM instances ORDER BY rowid") as cursor:
            rows = await cursor.fetchall()
        now = time.monotonic()
        return [
            Instance(
                instance_id=row["instance_id"],
                reservation_id=row["reservation_id"],
                owner_id=row["owner_id"],
                node_url=row["node_url"],
                vm=VmType.model_validate_json(row["vm"]),
                launch_index=row["launch_index"],
                net=NetConfig.model_validate_json(row["net"]),
                state=row["state"],
                detail=row["detail"],
                reason=row["reason"],
                launch_time=row["launch_time"],
                # Accepted before this process started: older than any poll it will make.
                confirmed_at=(now - 1e6) if row["confirmed"] else None,
                terminating=bool(row["terminating"]),
                tried=json.loads(row["tried"]),
                ended_at=row["ended_at"],
            )
            for row in rows
        ]

    # --- migrations and maintenance --------------------------------------------------------------------
    async def save_migration(self, migration: Migration, instances: Sequence[Instance] = ()) -> None:
        """The migration's state and, in the same transaction, the instances whose node it changed."""
        row = (
            migration.instance_id,
            migration.source_url,
            migration.target_url,
            migration.mode,
            migration.state,
            migration.target.model_dump_json() if migration.target else "",
            migration.error,
            migration.started_at,
            migration.updated_at,
        )
        sql = (
            "INSERT OR REPLACE INTO migrations(instance_id, source_url, target_url, mode, state, target, error,"
            " started_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        await write_together(self.db, [(sql, [row]), _upsert(instances)])  # one hop, as save_instances

    async def load_migrations(self) -> list[Migration]:
        async with self.db.execute("SELECT * FROM migrations ORDER BY started_at") as cursor:
            rows = await cursor.fetchall()
        return [
            Migration(
                instance_id=row["instance_id"],
                source_url=row["source_url"],
                target_url=row["target_url"],
                mode=row["mode"],
                state=row["state"],
                target=MigrationTarget.model_validate_json(row["target"]) if row["target"] else None,
                error=row["error"],
                started_at=row["started_at"],
                updated_at=row["updated_at"],
            )
            for row in rows
        ]

    async def load_maintenance(self) -> dict[str, float]:
        """Node URL -> when its maintenance began."""
        async with self.db.execute("SELECT url, since FROM maintenance") as cursor:
            return {row["url"]: row["since"] for row in await cursor.fetchall()}

    async def set_maintenance(self, url: str, since: float) -> None:
        await self.db.execute("INSERT OR REPLACE INTO maintenance(url, since) VALUES (?, ?)", (url, since))
        await self.db.commit()

    async def clear_maintenance(self, url: str) -> None:
        await self.db.execute("DELETE FROM maintenance WHERE url = ?", (url,))
        await self.db.commit()
