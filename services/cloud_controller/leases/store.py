"""The leases' records, in memory for the scheduler and written through to their own database (leases.db, or the
CLC's PostgreSQL database; migrations in `leases/migrations/`) before anything is acted on: a CLC restart finds
every reservation, queue position, suspended guest and preemption as they were."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.database import Database, open_database, upsert

if TYPE_CHECKING:
    from common.database.leadership import Leadership

MIGRATIONS = "services.cloud_controller.leases.migrations"
FILE_NAME = "leases.db"
LIVE_CR_STATES = ("scheduled", "active")


@dataclass(slots=True)
class CapacityReservation:
    reservation_id: str
    owner_id: str
    zone: str
    instance_type: str
    platform: str
    total: int
    match: str  # open | targeted
    start_date: float
    end_date: float | None
    end_date_type: str
    state: str
    create_date: float
    tenancy: str = "default"
    client_token: str = ""
    nodes: list[str] = field(default_factory=list)
    tags: list[dict[str, Any]] = field(default_factory=list)

    @property
    def end(self) -> float:
        return self.end_date if self.end_date is not None else float("inf")

    @property
    def live(self) -> bool:
        return self.state in LIVE_CR_STATES


@dataclass(slots=True)
class SpotRequest:
    request_id: str
    owner_id: str
    position: int
    type: str  # one-time | persistent
    state: str
    status_code: str
    status_time: float
    interruption: str  # terminate | stop | hibernate
    spec: dict[str, Any]
    create_time: float
    user_id: str = ""
    status_message: str = ""
    zone: str = ""
    instance_id: str = ""
    valid_until: float | None = None
    duration: float | None = None
    client_token: str = ""
    notice_action: str = ""
    notice_time: float | None = None


@dataclass(slots=True)
class Preemption:
    at: float
    request_id: str
    instance_id: str
    action: str
    reason: str


_CR_COLUMNS = [f.name for f in fields(CapacityReservation)]
_SPOT_COLUMNS = [f.name for f in fields(SpotRequest)]
MAX_PREEMPTIONS_KEPT = 1000


class LeaseStore:
    def __init__(self, db: Database):
        self.db = db
        self.reservations: dict[str, CapacityReservation] = {}
        self.spot: dict[str, SpotRequest] = {}
        self.lease_of: dict[str, str] = {}  # instance id -> capacity reservation or spot request id
        self.preemptions: list[Preemption] = []

    @classmethod
    async def open(cls, state_dir: Path, url: str = "", leadership: Leadership | None = None) -> LeaseStore:
        """In `state_dir`/leases.db, or in the CLC's PostgreSQL database at `url`."""
        if not url:
            await asyncio.to_thread(state_dir.mkdir, parents=True, exist_ok=True)
        store = cls(await open_database(url or state_dir / FILE_NAME, MIGRATIONS, "leases", leadership))
        await store._load()
        return store

    async def close(self) -> None:
        await self.db.close()

    async def _load(self) -> None:
        for row in await self.db.fetchall(f"SELECT {', '.join(_CR_COLUMNS)} FROM capacity_reservations"):
            values = dict(row)
            values["nodes"], values["tags"] = json.loads(values["nodes"]), json.loads(values["tags"])
            self.reservations[values["reservation_id"]] = CapacityReservation(**values)
        for row in await self.db.fetchall(f"SELECT {', '.join(_SPOT_COLUMNS)} FROM spot_requests"):
            values = dict(row)
            values["spec"] = json.loads(values["spec"])
            self.spot[values["request_id"]] = SpotRequest(**values)
        for row in await self.db.fetchall("SELECT instance_id, lease_id FROM lease_instances"):
            self.lease_of[row[0]] = row[1]
        rows = await self.db.fetchall(
            "SELECT at, request_id, instance_id, action, reason FROM preemptions ORDER BY id DESC LIMIT ?",
            (MAX_PREEMPTIONS_KEPT,),
        )
        self.preemptions = [Preemption(*row) for row in reversed(list(rows))]

    async def _write(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        async with self.db.transaction() as tx:
            for sql, args in statements:
                await tx.execute(sql, args)

    @staticmethod
    def _cr_row(cr: CapacityReservation) -> tuple[str, tuple[Any, ...]]:
        values = [getattr(cr, c) for c in _CR_COLUMNS]
        values[_CR_COLUMNS.index("nodes")] = json.dumps(cr.nodes)
        values[_CR_COLUMNS.index("tags")] = json.dumps(cr.tags)
        return upsert("capacity_reservations", _CR_COLUMNS, ["reservation_id"]), tuple(values)

    @staticmethod
    def _spot_row(request: SpotRequest) -> tuple[str, tuple[Any, ...]]:
        values = [getattr(request, c) for c in _SPOT_COLUMNS]
        values[_SPOT_COLUMNS.index("spec")] = json.dumps(request.spec)
        return upsert("spot_requests", _SPOT_COLUMNS, ["request_id"]), tuple(values)

    async def save_reservations(self, *reservations: CapacityReservation) -> None:
        await self._write([self._cr_row(cr) for cr in reservations])

    async def save_spot(self, *requests: SpotRequest) -> None:
        await self._write([self._spot_row(r) for r in requests])

    async def bind(self, lease_id: str, instance_ids: list[str], *spot: SpotRequest) -> None:
        """Record that these instances run in `lease_id` (with the spot requests' new state), in one go."""
        statements = [
            (upsert("lease_instances", ["instance_id", "lease_id"], ["instance_id"]), (i, lease_id))
            for i in instance_ids
        ]
        await self._write(statements + [self._spot_row(r) for r in spot])
        for instance_id in instance_ids:
            self.lease_of[instance_id] = lease_id

    async def unbind(self, instance_ids: list[str]) -> None:
        await self._write([("DELETE FROM lease_instances WHERE instance_id = ?", (i,)) for i in instance_ids])
        for instance_id in instance_ids:
            self.lease_of.pop(instance_id, None)

    async def record_preemption(self, event: Preemption, *spot: SpotRequest) -> None:
        sql = "INSERT INTO preemptions (at, request_id, instance_id, action, reason) VALUES (?, ?, ?, ?, ?)"
        args = (event.at, event.request_id, event.instance_id, event.action, event.reason)
        await self._write([(sql, args)] + [self._spot_row(r) for r in spot])
        self.preemptions.append(event)
        del self.preemptions[:-MAX_PREEMPTIONS_KEPT]

    def next_position(self) -> int:
        return max((r.position for r in self.spot.values()), default=0) + 1

    def instances_of(self, lease_id: str) -> list[str]:
        return [i for i, lease in self.lease_of.items() if lease == lease_id]
