"""Reservations, instances and images, held in memory for fast reads and written through to SQLite.

The CLC is the only writer of its database, so the in-memory maps are the truth while it runs and the database
is what a restart reloads. A change is applied in memory (synchronously, so checks and updates are atomic on the
event loop) and then written before anything is sent to other services.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from common.messages.cc_nc import ImageRef

if TYPE_CHECKING:
    from services.cloud_controller.database import Database


# EC2 state names and codes.
STATE_CODES = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}
LIVE_STATES = ("pending", "running", "shutting-down")


@dataclass(slots=True)
class Reservation:
    reservation_id: str
    owner_id: str
    zone: str
    requester_user_id: str = ""
    client_token: str = ""
    groups: list[str] = field(default_factory=list)  # security group names
    group_ids: list[str] = field(default_factory=list)
    created_at: float = 0.0
    instance_ids: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Instance:
    instance_id: str
    reservation_id: str
    owner_id: str
    image_id: str
    vm_type: str
    cores: int
    memory_mb: int
    disk_gb: int
    zone: str
    state: str
    launch_time: float
    updated_at: float
    user_id: str = ""
    kernel_id: str = ""
    ramdisk_id: str = ""
    key_name: str = ""
    key_material: str = ""  # the public key text, served by the metadata service
    user_data: str = ""  # base64, as the client sent it
    launch_index: int = 0
    state_reason: str = ""
    private_mac: str = ""
    private_ip: str = ""
    public_ip: str = ""
    vlan: int = -1
    network_index: int = -1
    node_id: str = ""
    last_seen: float = 0.0  # when a CC last reported it
    terminated_at: float = 0.0
    disable_api_termination: bool = False  # TerminateInstances is refused while set
    shutdown_behavior: str = "terminate"  # what a guest's own power-off does: terminate | stop
    root_device_type: str = "instance-store"  # or ebs: its root is a volume (it can stop and start)
    root_device_name: str = "/dev/sda1"
    launch_id: str = ""  # the CC reservation of its current run ('' = reservation_id); StartInstances makes one

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def run_id(self) -> str:
        return self.launch_id or self.reservation_id


_INSTANCE_COLUMNS = [f.name for f in fields(Instance)]
# What applying a CC's report may change of an instance (reports.py, with set_state).
REPORTED_COLUMNS = (
    "state", "updated_at", "state_reason", "terminated_at", "node_id", "private_ip", "public_ip", "last_seen"
)  # fmt: skip
_RESERVATION_COLUMNS = [f.name for f in fields(Reservation) if f.name != "instance_ids"]


@dataclass(slots=True)
class Image:
    image_id: str
    owner_id: str
    kind: str  # machine | kernel | ramdisk
    name: str
    location: str
    created_at: float
    description: str = ""
    architecture: str = "x86_64"
    kernel_id: str = ""
    ramdisk_id: str = ""
    root_device_name: str = "/dev/sda1"
    state: str = "available"
    is_public: bool = False
    launch_permissions: set[str] = field(default_factory=set)
    product_codes: set[str] = field(default_factory=set)
    root_device_type: str = "instance-store"  # or ebs: the root is made from a snapshot at each launch
    # EBS mappings: [{"device", "snapshot_id", "size", "delete_on_termination"}] (JSON in the database)
    block_devices: list[dict[str, Any]] = field(default_factory=list)
    # CreateImage without NoReboot: the instance stopped for the image's snapshots, started again after them
    reboot_instance_id: str = ""

    def can_launch(self, account_id: str) -> bool:
        return self.owner_id == account_id or self.is_public or account_id in self.launch_permissions

    @property
    def snapshot_ids(self) -> set[str]:
        return {m["snapshot_id"] for m in self.block_devices if m.get("snapshot_id")}

    def ref(self) -> ImageRef:
        """The image as a launch names it to the CC."""
        return ImageRef(id=self.image_id, manifest=self.location, architecture=self.architecture)


_IMAGE_COLUMNS = [f.name for f in fields(Image) if f.name not in ("launch_permissions", "product_codes")]


def _image_value(image: Image, column: str) -> object:
    value = getattr(image, column)
    return json.dumps(value) if column == "block_devices" else value


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():  # its caller was cancelled
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class Store:
    def __init__(self, db: Database):
        self.db = db
        self._unwritten: list[tuple[Reservation, asyncio.Future[None]]] = []  # save_reservation's queue
        self._writer: asyncio.Task[None] | None = None
        self.instances: dict[str, Instance] = {}
        self.reservations: dict[str, Reservation] = {}
        self.images: dict[str, Image] = {}
        self.by_private_ip: dict[str, str] = {}  # live instances only, for the metadata service
        self.tokens: dict[tuple[str, str], str] = {}  # (owner, client token) -> reservation id

    async def load(self) -> None:
        for row in await self.db.fetchall(f"SELECT {', '.join(_RESERVATION_COLUMNS)} FROM reservations"):
            values = dict(row)
            values["groups"] = json.loads(values["groups"])
            values["group_ids"] = json.loads(values["group_ids"])
            reservation = Reservation(**values)
            self.reservations[reservation.reservation_id] = reservation
            if reservation.client_token:
                self.tokens[(reservation.owner_id, reservation.client_token)] = reservation.reservation_id
        for row in await self.db.fetchall(
            f"SELECT {', '.join(_INSTANCE_COLUMNS)} FROM instances ORDER BY launch_index"
        ):
            instance = Instance(**dict(row))
            instance.disable_api_termination = bool(instance.disable_api_termination)
            self._index(instance)
        for row in await self.db.fetchall(f"SELECT {', '.join(_IMAGE_COLUMNS)} FROM images"):
            values = dict(row)
            values["is_public"] = bool(values["is_public"])
            values["block_devices"] = json.loads(values["block_devices"] or "[]")
            self.images[values["image_id"]] = Image(**values)
        for row in await self.db.fetchall("SELECT image_id, account_id FROM image_launch_permissions"):
            if row[0] in self.images:
                self.images[row[0]].launch_permissions.add(row[1])
        for row in await self.db.fetchall("SELECT image_id, code FROM image_product_codes"):
            if row[0] in self.images:
                self.images[row[0]].product_codes.add(row[1])

    def _index(self, instance: Instance) -> None:
        self.instances[instance.instance_id] = instance
        reservation = self.reservations.get(instance.reservation_id)
        if reservation is not None and instance.instance_id not in reservation.instance_ids:
            reservation.instance_ids.append(instance.instance_id)
        self.reindex_ip(instance)

    def reindex_ip(self, instance: Instance, old_ip: str = "") -> None:
        if old_ip and self.by_private_ip.get(old_ip) == instance.instance_id:
            del self.by_private_ip[old_ip]
        if instance.private_ip:
            if instance.live:
                self.by_private_ip[instance.private_ip] = instance.instance_id
            elif self.by_private_ip.get(instance.private_ip) == instance.instance_id:
                del self.by_private_ip[instance.private_ip]

    # --- reservations and instances ---------------------------------------------------------------------
    def add_reservation(self, reservation: Reservation, instances: list[Instance]) -> None:
        """In memory only; `save_reservation` writes it."""
        self.reservations[reservation.reservation_id] = reservation
        if reservation.client_token:
            self.tokens[(reservation.owner_id, reservation.client_token)] = reservation.reservation_id
        for instance in instances:
            self._index(instance)

    async def save_reservation(self, reservation: Reservation) -> None:
        """Write a new reservation and its instances. Reservations of concurrent RunInstances requests share one
        transaction: those that arrive while one is being written are written together next (group commit);
        each caller returns once its own is committed, or gets its own error."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unwritten.append((reservation, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_reservations(), name="reservation writer")
        await future

    async def _write_reservations(self) -> None:
        batch: list[tuple[Reservation, asyncio.Future[None]]] = []
        try:
            while self._unwritten:
                batch, self._unwritten = self._unwritten, []
                try:
                    await self._insert_reservations([reservation for reservation, _ in batch])
                except Exception as err:
                    if len(batch) == 1:
                        _settle(batch[0][1], err)
                        continue
                    for reservation, future in batch:  # one of them is at fault (the transaction is undone): alone
                        try:
                            await self._insert_reservations([reservation])
                        except Exception as alone:
                            _settle(future, alone)
                        else:
                            _settle(future, None)
                    continue
                for _, future in batch:
                    _settle(future, None)
        except asyncio.CancelledError:  # the CLC stops: nobody waits for ever
            for _, future in batch + self._unwritten:
                future.cancel()
            self._unwritten = []
            raise
        finally:
            self._writer = None

    async def _insert_reservations(self, reservations: list[Reservation]) -> None:
        rows = []
        for reservation in reservations:
            values = asdict(reservation)
            values.pop("instance_ids")
            values["groups"] = json.dumps(values["groups"])
            values["group_ids"] = json.dumps(values["group_ids"])
            rows.append([values[c] for c in _RESERVATION_COLUMNS])
        instances = [self.instances[i] for r in reservations for i in r.instance_ids]
        await self.db.write(
            [
                (
                    f"INSERT INTO reservations({', '.join(_RESERVATION_COLUMNS)}) VALUES "
                    f"({', '.join('?' * len(_RESERVATION_COLUMNS))})",
                    rows,
                ),
                (
                    f"INSERT INTO instances({', '.join(_INSTANCE_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(_INSTANCE_COLUMNS))})",
                    [[getattr(i, c) for c in _INSTANCE_COLUMNS] for i in instances],
                ),
            ]
        )

    async def save_instances(self, instances: list[Instance]) -> None:
        if not instances:
            return
        columns = [c for c in _INSTANCE_COLUMNS if c != "instance_id"]
        await self.db.write(
            [
                (
                    f"UPDATE instances SET {', '.join(f'{c} = ?' for c in columns)} WHERE instance_id = ?",
                    [[getattr(i, c) for c in columns] + [i.instance_id] for i in instances],
                )
            ]
        )

    async def save_reported(self, instances: list[Instance]) -> None:
        """Write what a CC's report changes of an instance (reports.py: its state and reason, node, addresses and
        when it was last seen), not every column: a big launch's reports rewrote all 35 of 20,000 rows, user data
        included, on the database thread that shares the interpreter with the requests."""
        if not instances:
            return
        async with self.db.transaction() as conn:
            await conn.executemany(
                f"UPDATE instances SET {', '.join(f'{c} = ?' for c in REPORTED_COLUMNS)} WHERE instance_id = ?",
                [[getattr(i, c) for c in REPORTED_COLUMNS] + [i.instance_id] for i in instances],
            )

    async def release_token(self, reservation: Reservation) -> None:
        if reservation.client_token:
            self.tokens.pop((reservation.owner_id, reservation.client_token), None)
            reservation.client_token = ""
            await self.db.execute(
                "UPDATE reservations SET client_token = '' WHERE reservation_id = ?", (reservation.reservation_id,)
            )

    def set_state(self, instance: Instance, state: str, reason: str = "", now: float | None = None) -> bool:
        """Move an instance to `state` (in memory); False if nothing changed. Terminated is final."""
        if instance.state == state or instance.state == "terminated":
            return False
        now = now or time.time()
        instance.state, instance.updated_at = state, now
        if reason:
            instance.state_reason = reason
        if state == "terminated":
            instance.terminated_at = now
        self.reindex_ip(instance)
        return True

    async def forget(self, instance_ids: list[str]) -> None:
        """Bury terminated instances (and reservations left empty)."""
        emptied = []
        for instance_id in instance_ids:
            instance = self.instances.pop(instance_id, None)
            if instance is None:
                continue
            reservation = self.reservations.get(instance.reservation_id)
            if reservation is not None:
                reservation.instance_ids.remove(instance_id)
                if not reservation.instance_ids:
                    emptied.append(reservation)
        for reservation in emptied:
            del self.reservations[reservation.reservation_id]
            self.tokens.pop((reservation.owner_id, reservation.client_token), None)
        async with self.db.transaction() as conn:
            await conn.executemany("DELETE FROM instances WHERE instance_id = ?", [(i,) for i in instance_ids])
            await conn.executemany(
                "DELETE FROM reservations WHERE reservation_id = ?", [(r.reservation_id,) for r in emptied]
            )

    # --- images -----------------------------------------------------------------------------------------
    async def save_image(self, image: Image, new: bool = False) -> None:
        async with self.db.transaction() as conn:
            if new:
                await conn.execute(
                    f"INSERT INTO images({', '.join(_IMAGE_COLUMNS)}) VALUES ({', '.join('?' * len(_IMAGE_COLUMNS))})",
                    [_image_value(image, c) for c in _IMAGE_COLUMNS],
                )
            else:
                columns = [c for c in _IMAGE_COLUMNS if c != "image_id"]
                await conn.execute(
                    f"UPDATE images SET {', '.join(f'{c} = ?' for c in columns)} WHERE image_id = ?",
                    [_image_value(image, c) for c in columns] + [image.image_id],
                )
            await conn.execute("DELETE FROM image_launch_permissions WHERE image_id = ?", (image.image_id,))
            await conn.executemany(
                "INSERT INTO image_launch_permissions(image_id, account_id) VALUES (?, ?)",
                [(image.image_id, account) for account in sorted(image.launch_permissions)],
            )
            await conn.executemany(
                "INSERT INTO image_product_codes(image_id, code) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(image.image_id, code) for code in sorted(image.product_codes)],
            )
        self.images[image.image_id] = image

    async def delete_image(self, image_id: str) -> None:
        self.images.pop(image_id, None)
        await self.db.execute("DELETE FROM images WHERE image_id = ?", (image_id,))
