"""A remote zone's database (remote.db, apart from the node zones' cc.db): instances with their remote ids,
launch specifications, the networks' rule sets, and the local images uploaded to the remote cloud."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import aiosqlite

from common.db import Statement, open_db, write_together
from common.messages.cc_nc import LaunchSpec, NetConfig, VmType
from common.messages.network import NetworkRule
from services.cluster_controller.remote.model import RemoteInstance, Upload
from services.cluster_controller.reservations import Reservations

_COLUMNS = (
    "instance_id, reservation_id, owner_id, vm, launch_index, net, state, remote_id, remote_state, terminating,"
    " detail, reason, launch_time, ended_at"
)


def _row(i: RemoteInstance) -> tuple[object, ...]:
    return (
        i.instance_id,
        i.reservation_id,
        i.owner_id,
        i.vm.model_dump_json(),
        i.launch_index,
        i.net.model_dump_json(),
        i.state,
        i.remote_id,
        i.remote_state,
        int(i.terminating),
        i.detail,
        i.reason,
        i.launch_time,
        i.ended_at,
    )


def _upsert(instances: Iterable[RemoteInstance]) -> Statement:
    return f"INSERT OR REPLACE INTO instances({_COLUMNS}) VALUES ({', '.join('?' * 14)})", [_row(i) for i in instances]


class RemoteStore:
    def __init__(self, db: aiosqlite.Connection):
        self.db = db
        self.reservations = Reservations(db)

    @classmethod
    async def open(cls, path: Path) -> RemoteStore:
        return cls(await open_db(path, "services.cluster_controller.remote.migrations"))

    async def close(self) -> None:
        await self.db.close()

    async def add_reservation(self, reservation_id: str, spec: LaunchSpec, instances: list[RemoteInstance]) -> None:
        await self.reservations.add(reservation_id, spec, _upsert(instances))

    async def save(self, instances: Iterable[RemoteInstance]) -> None:
        await write_together(self.db, [_upsert(instances)])

    async def load(self) -> list[RemoteInstance]:
        async with self.db.execute(f"SELECT {_COLUMNS} FROM instances ORDER BY rowid") as cursor:
            rows = await cursor.fetchall()
        return [
            RemoteInstance(
                instance_id=r["instance_id"],
                reservation_id=r["reservation_id"],
                owner_id=r["owner_id"],
                vm=VmType.model_validate_json(r["vm"]),
                launch_index=r["launch_index"],
                net=NetConfig.model_validate_json(r["net"]),
                state=r["state"],
                remote_id=r["remote_id"],
                remote_state=r["remote_state"],
                terminating=bool(r["terminating"]),
                detail=r["detail"],
                reason=r["reason"],
                launch_time=r["launch_time"],
                ended_at=r["ended_at"],
            )
            for r in rows
        ]

    # --- networks -------------------------------------------------------------------------------------
    async def save_network(self, name: str, rules: list[NetworkRule]) -> None:
        await self.db.execute(
            "INSERT INTO networks(name, rules, updated_at) VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE"
            " SET rules = excluded.rules, updated_at = excluded.updated_at",
            (name, json.dumps([r.model_dump() for r in rules]), time.time()),
        )
        await self.db.commit()

    async def load_networks(self) -> dict[str, list[NetworkRule]]:
        async with self.db.execute("SELECT name, rules FROM networks") as cursor:
            rows = await cursor.fetchall()
        return {r["name"]: [NetworkRule.model_validate(x) for x in json.loads(r["rules"])] for r in rows}

    # --- images uploaded to the remote cloud ------------------------------------------------------------
    async def save_upload(self, upload: Upload) -> None:
        await self.db.execute(
            "INSERT OR REPLACE INTO uploads(local_id, kind, manifest, bucket, state, remote_id, reason, architecture,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                upload.local_id,
                upload.kind,
                upload.manifest,
                upload.bucket,
                upload.state,
                upload.remote_id,
                upload.reason,
                upload.architecture,
                time.time(),
            ),
        )
        await self.db.commit()

    async def forget_upload(self, local_id: str) -> None:
        await self.db.execute("DELETE FROM uploads WHERE local_id = ?", (local_id,))
        await self.db.commit()

    async def load_uploads(self) -> list[Upload]:
        async with self.db.execute(
            "SELECT local_id, kind, manifest, bucket, state, remote_id, reason, architecture"
            " FROM uploads ORDER BY rowid"
        ) as cursor:
            rows = await cursor.fetchall()
        return [
            Upload(
                local_id=r["local_id"],
                kind=r["kind"],
                manifest=r["manifest"],
                bucket=r["bucket"],
                state=r["state"],
                remote_id=r["remote_id"],
                reason=r["reason"],
                architecture=r["architecture"],
            )
            for r in rows
        ]
