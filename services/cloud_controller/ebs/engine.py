"""The CLC's side of EBS: what users asked for (volumes, attachments, snapshots), checked (ownership, quotas, the
zone's capacity), written, then sent to the zone's CC (services/cluster_controller/storage/).

State machines, as EC2's: volume creating -> available <-> in-use (attaching -> attached -> detaching) ->
deleting -> (gone) | error; snapshot pending -> completed | error, deleting -> (gone). Each transition is written
before the CC hears of it. A call the CC did not answer leaves the transitional state in place, and the reconcile
loop (every `poll_interval`, and at once after a start) compares each zone's DescribeStorage with the records and
sends the call again (every CC operation is idempotent by id) or settles the state the CC reports: a crash of the
CLC or the CC at any point converges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from common import ids
from common.messages import storage as msg
from common.rpc import PeerUnreachable, RpcError
from services.cloud_controller.compute.errors import ComputeError
from services.cloud_controller.database import Database
from services.cloud_controller.ebs.store import EbsStore, Snapshot, Volume

if TYPE_CHECKING:
    from services.cloud_controller.compute.engine import Compute, Principal

log = logging.getLogger("koala.clc.ebs")
DEVICE = re.compile(r"^/dev/(sd|xvd|vd)[b-z]$")
CC_TIMEOUT = 60.0
T = TypeVar("T", bound=BaseModel)


@dataclass
class EbsSettings:
    quota_volume_gb: int = 0  # GiB of volumes per account; 0 = unlimited
    quota_volumes: int = 0
    quota_snapshots: int = 0
    poll_interval: float = 5.0


@dataclass
class BootAttachment:
    """The instance a new volume is made for, at `device`, as part of its launch (ebs/roots.py)."""

    instance_id: str
    device: str
    delete_on_termination: bool = True
    trusted: bool = False


@dataclass
class ZoneStorage:
    capacity_gb: int = 0
    allocated_gb: int = 0
    at: float = 0.0  # monotonic time of the report


def _not_found(volume_id: str) -> ComputeError:
    return ComputeError("InvalidVolume.NotFound", f"The volume '{volume_id[:64]}' does not exist.")


def _snapshot_not_found(snapshot_id: str) -> ComputeError:
    return ComputeError("InvalidSnapshot.NotFound", f"The snapshot '{snapshot_id[:64]}' does not exist.")


class Ebs:
    def __init__(self, db: Database, compute: Compute, settings: EbsSettings):
        self.db, self.compute, self.settings = db, compute, settings
        self.store = EbsStore(db)
        self.zones: dict[str, ZoneStorage] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.Task[Any] | None = None
        self._wake = asyncio.Event()
        self._locks: dict[str, asyncio.Lock] = {}
        self.on_forget: list[
            Callable[[list[str]], Awaitable[None]]
        ] = []  # async listeners of volume and snapshot ids gone for good (their tags)
        self.roots: Any = None  # ebs.roots.Roots (EBS-backed images and instances), set by install

    # --- life ---------------------------------------------------------------------------------------------
    async def load(self) -> None:
        await self.store.load()

    def start(self) -> None:
        self._loop = asyncio.create_task(self._reconcile_loop(), name="ebs reconcile")

    async def stop(self) -> None:
        tasks = [t for t in (self._loop, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _background(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

        def done(finished: asyncio.Task[Any]) -> None:
            self._tasks.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                log.warning("%s failed: %s", name, finished.exception())

        task.add_done_callback(done)

    def wake(self) -> None:
        """Reconcile now (something waits for a volume's state)."""
        self._wake.set()

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def _call(self, zone: str, operation: str, message: BaseModel, answer: type[T]) -> T:
        return await self.compute.cc.storage(zone, operation, message, answer, CC_TIMEOUT)

    # --- lookups ------------------------------------------------------------------------------------------
    def volume(self, volume_id: str, principal: Principal) -> Volume:
        if not ids.is_id(volume_id, "vol"):
            raise ComputeError("InvalidVolumeID.Malformed", f'Invalid id: "{volume_id[:64]}"')
        volume = self.store.volumes.get(ids.normalize(volume_id))
        if volume is None or volume.owner_id != principal.account_id:
            raise _not_found(volume_id)
        return volume

    def snapshot(self, snapshot_id: str, principal: Principal, restore: bool = False) -> Snapshot:
        """The caller's snapshot, or (restore) one it may make volumes from."""
        if not ids.is_id(snapshot_id, "snap"):
            raise ComputeError("InvalidSnapshotID.Malformed", f'Invalid id: "{snapshot_id[:64]}"')
        snapshot = self.store.snapshots.get(ids.normalize(snapshot_id))
        if snapshot is None:
            raise _snapshot_not_found(snapshot_id)
        allowed = snapshot.restorable_by(principal.account_id) if restore else snapshot.owner_id == principal.account_id
        if not allowed:
            raise _snapshot_not_found(snapshot_id)
        return snapshot

    def _snapshot_for(self, snapshot_id: str, principal: Any, trusted: bool) -> Snapshot | None:
        if not snapshot_id:
            return None
        if not trusted:
            return self.snapshot(snapshot_id, principal, restore=True)
        snapshot = self.store.snapshots.get(ids.normalize(snapshot_id))
        if snapshot is None:
            raise _snapshot_not_found(snapshot_id)
        return snapshot

    def used_gb(self, owner_id: str) -> int:
        return sum(v.size_gb for v in self.store.volumes.values() if v.owner_id == owner_id)

    def zone_allocated(self, zone: str) -> int:
        return sum(v.size_gb for v in self.store.volumes.values() if v.zone == zone)

    def zone_capacity(self, zone: str) -> ZoneStorage:
        return self.zones.get(zone) or ZoneStorage()

    def _new_id(self, prefix: str) -> str:
        taken = self.store.volumes if prefix == "vol" else self.store.snapshots
        while True:
            candidate = ids.new_id(prefix)
            if candidate not in taken:
                return candidate

    # --- volumes ------------------------------------------------------------------------------------------
    async def create_volume(
        self,
        principal: Principal,
        zone: str,
        size: int | None,
        snapshot_id: str = "",
        volume_type: str = "",
        client_token: str = "",
        boot: BootAttachment | None = None,
    ) -> Volume:
        """A new volume; with `boot`, one an instance launches with (recorded attached to it from the start, so a
        crash leaves no volume without its instance; `boot.trusted`: the image's own snapshot, which launching
        the image allows restoring whoever owns it)."""
        owner = principal.account_id
        if len(client_token) > 64:
            raise ComputeError("InvalidParameterValue", "ClientToken: at most 64 characters")
        if client_token and (owner, client_token) in self.store.tokens:
            return self.store.volumes[self.store.tokens[(owner, client_token)]]
        if volume_type not in ("", "standard"):
            raise ComputeError("InvalidParameterValue", f"Volume type '{volume_type[:32]}' is not supported here.")
        if zone not in self.compute.cc.clusters:
            raise ComputeError("InvalidParameterValue", f"Invalid availability zone: [{zone[:64]}]")
        snapshot = self._snapshot_for(snapshot_id, principal, boot is not None and boot.trusted)
        if snapshot is not None and snapshot.state != "completed":
            raise ComputeError("IncorrectState", f"Snapshot '{snapshot.snapshot_id}' is {snapshot.state}.")
        if size is None:
            if snapshot is None:
                raise ComputeError("MissingParameter", "The request must contain the parameter size or snapshotId")
            size = snapshot.volume_size
        if not 1 <= size <= msg.MAX_VOLUME_GB:
            raise ComputeError(
                "InvalidParameterValue", f"Volume of {size} GiB is outside 1..{msg.MAX_VOLUME_GB} GiB (size)."
            )
        if snapshot is not None and size < snapshot.volume_size:
            raise ComputeError(
                "InvalidParameterValue",
                f"Volume of {size} GiB is smaller than snapshot {snapshot.snapshot_id} ({snapshot.volume_size} GiB).",
            )
        if zone not in self.zones:
            await self.refresh(zone)
        # From the checks to the record everything is synchronous: concurrent requests see each other.
        quota = self.settings.quota_volume_gb
        if quota and self.used_gb(owner) + size > quota:
            raise ComputeError(
                "VolumeLimitExceeded", f"Volumes of {quota} GiB at most per account; {self.used_gb(owner)} in use."
            )
        if self.settings.quota_volumes and sum(1 for v in self.store.volumes.values() if v.owner_id == owner) >= (
            self.settings.quota_volumes
        ):
            raise ComputeError("VolumeLimitExceeded", f"At most {self.settings.quota_volumes} volumes per account.")
        capacity = self.zone_capacity(zone).capacity_gb
        if self.zone_allocated(zone) + size > capacity:
            raise ComputeError(
                "InsufficientVolumeCapacity",
                f"Zone {zone} has {max(capacity - self.zone_allocated(zone), 0)} GiB free for volumes; {size} asked.",
                503,
            )
        now = time.time()
        volume = Volume(
            volume_id=self._new_id("vol"),
            owner_id=owner,
            zone=zone,
            size_gb=size,
            state="creating",
            create_time=now,
            updated_at=now,
            snapshot_id=snapshot.snapshot_id if snapshot else "",
            client_token=client_token,
        )
        if boot is not None:
            volume.instance_id, volume.device, volume.attach_state = boot.instance_id, boot.device, "attached"
            volume.delete_on_termination, volume.boot, volume.attach_time = boot.delete_on_termination, True, now
        self.store.volumes[volume.volume_id] = volume
        if client_token:
            self.store.tokens[(owner, client_token)] = volume.volume_id
        try:
            await self.store.save_volume(volume)  # written before the CC hears of it
        except BaseException:
            self.store.volumes.pop(volume.volume_id, None)
            self.store.tokens.pop((owner, client_token), None)
            raise
        await self._send_create(volume)
        return volume

    async def _send_create(self, volume: Volume) -> None:
        request = msg.CreateVolumeRequest(
            volume_id=volume.volume_id, size_gb=volume.size_gb, snapshot_id=volume.snapshot_id
        )
        try:
            answer = await self._call(volume.zone, "CreateVolume", request, msg.StorageVolume)
        except PeerUnreachable as err:
            log.warning("%s: CreateVolume in %s not answered (will retry): %s", volume.volume_id, volume.zone, err)
            return
        except RpcError as err:
            if err.status >= 500:
                log.warning("%s: CreateVolume in %s: %s (will retry)", volume.volume_id, volume.zone, err)
                return
            await self.store.forget_volume(volume)  # refused: as if never asked
            code = err.code if err.code in ("InsufficientVolumeCapacity",) else "InvalidParameterValue"
            raise ComputeError(code, f"The zone {volume.zone} refused the volume: {err.message}", 503) from None
        await self._settle(volume, answer)

    async def _settle(self, volume: Volume, seen: msg.StorageVolume) -> None:
        """Apply what the CC reports of a volume the CLC knows."""
        changed = False
        if volume.state == "creating" and seen.state in ("available", "error"):
            volume.state, volume.detail, changed = seen.state, seen.detail, True
            if volume.state == "available" and volume.attach_state:
                volume.state = "in-use"  # made for an instance that boots with it
        attachment = seen.attachment
        if volume.boot and volume.attach_state == "attached":
            if changed:
                await self.store.save_volume(volume)
            return  # exported at each start of its instance, by the launch: no export between runs is normal
        if volume.attach_state == "attaching" and attachment is not None and attachment.state == "attached":
            volume.attach_state, volume.attach_time, changed = "attached", time.time(), True
        if volume.attach_state in ("attached", "detaching") and attachment is None and seen.state != "gone":
            self._clear_attachment(volume)
            changed = True
        if changed:
            await self.store.save_volume(volume)

    @staticmethod
    def _clear_attachment(volume: Volume) -> None:
        volume.state = "available"
        volume.instance_id = volume.device = volume.attach_state = ""
        volume.attach_time, volume.delete_on_termination, volume.boot = 0.0, False, False

    async def delete_volume(self, principal: Principal, volume_id: str) -> None:
        volume = self.volume(volume_id, principal)
        if volume.attach_state or volume.state == "in-use":
            raise ComputeError(
                "VolumeInUse", f"Volume {volume.volume_id} is currently attached to {volume.instance_id}"
            )
        if any(s.volume_id == volume.volume_id and s.state == "pending" for s in self.store.snapshots.values()):
            raise ComputeError("VolumeInUse", f"Volume {volume.volume_id} has a snapshot in progress")
        await self._delete(volume)

    async def _delete(self, volume: Volume) -> None:
        if volume.state != "deleting":
            volume.state = "deleting"
            await self.store.save_volume(volume)  # written before the CC hears of it
        try:
            answer = await self._call(volume.zone, "DeleteVolume", msg.VolumeIdRequest(volume_id=volume.volume_id),
                                      msg.StorageVolume)  # fmt: skip
        except RpcError as err:
            log.warning("%s: DeleteVolume in %s: %s (will retry)", volume.volume_id, volume.zone, err)
            return
        if answer.state == "gone":
            await self.store.forget_volume(volume)
            for listener in self.on_forget:
                await listener([volume.volume_id])

    # --- attachments --------------------------------------------------------------------------------------
    async def attach(self, principal: Principal, volume_id: str, instance_id: str, device: str) -> Volume:
        volume = self.volume(volume_id, principal)
        instance = self.compute.instance(instance_id, principal)
        if not DEVICE.match(device or ""):
            raise ComputeError("InvalidParameterValue", f"Value ({device[:32]}) for parameter device is invalid.")
        async with self._lock(volume.volume_id):
            if volume.attach_state or volume.state == "in-use":
                raise ComputeError("VolumeInUse", f"{volume.volume_id} is already attached to {volume.instance_id}")
            if volume.state != "available":
                raise ComputeError("IncorrectState", f"The volume '{volume.volume_id}' is {volume.state}.")
            if instance.state != "running":
                raise ComputeError(
                    "IncorrectInstanceState",
                    f"The instance '{instance.instance_id}' is not 'running' ({instance.state}).",
                )
            if instance.zone != volume.zone:
                raise ComputeError(
                    "InvalidVolume.ZoneMismatch",
                    f"The volume '{volume.volume_id}' is not in the same availability zone as instance "
                    f"'{instance.instance_id}'",
                )
            for other in self.store.volumes.values():
                if other.instance_id == instance.instance_id and other.device == device:
                    raise ComputeError("InvalidParameterValue", f"Attachment point {device} is already in use")
            volume.state, volume.instance_id, volume.device = "in-use", instance.instance_id, device
            volume.attach_state, volume.attach_time = "attaching", time.time()
            await self.store.save_volume(volume)  # written before the CC hears of it
            await self._send_attach(volume, raise_refusal=True)
        return volume

    async def _send_attach(self, volume: Volume, raise_refusal: bool = False) -> None:
        request = msg.AttachVolumeRequest(volume_id=volume.volume_id, instance_id=volume.instance_id,
                                          device=volume.device)  # fmt: skip
        try:
            answer = await self._call(volume.zone, "AttachVolume", request, msg.StorageVolume)
        except PeerUnreachable as err:
            log.warning("%s: AttachVolume not answered (will retry): %s", volume.volume_id, err)
            return
        except RpcError as err:
            if (err.status >= 500 and err.code != "StorageUnavailable") or err.code == "IncorrectState":
                # Not answered, or the CC is still undoing an earlier try: the reconcile loop asks again.
                log.warning("%s: AttachVolume: %s (will retry)", volume.volume_id, err)
                return
            log.warning("%s: attach to %s refused: %s", volume.volume_id, volume.instance_id, err)
            self._clear_attachment(volume)  # the CC undid its part
            await self.store.save_volume(volume)
            if raise_refusal:
                code = err.code if err.code in ("IncorrectInstanceState", "VolumeInUse") else "InternalError"
                raise ComputeError(
                    code, f"The volume could not be attached: {err.message}", 400 if code != "InternalError" else 500
                ) from None
            return
        await self._settle(volume, answer)

    async def detach(self, principal: Principal, volume_id: str, instance_id: str = "", device: str = "",
                     force: bool = False) -> Volume:  # fmt: skip
        volume = self.volume(volume_id, principal)
        async with self._lock(volume.volume_id):
            if not volume.attach_state:
                raise ComputeError("IncorrectState", f"Volume '{volume.volume_id}' is in the '{volume.state}' state.")
            if instance_id and ids.normalize(instance_id) != volume.instance_id:
                raise ComputeError(
                    "InvalidAttachment.NotFound",
                    f"The volume {volume.volume_id} is not attached to instance {instance_id[:20]}",
                )
            if device and device != volume.device:
                raise ComputeError(
                    "InvalidAttachment.NotFound", f"The volume {volume.volume_id} is not attached at {device[:32]}"
                )
            instance = self.compute.store.instances.get(volume.instance_id)
            if (
                volume.boot
                and instance is not None
                and volume.device == instance.root_device_name
                and instance.state not in ("stopped", "terminated")
            ):
                raise ComputeError(
                    "OperationNotPermitted",
                    f"The volume {volume.volume_id} is the root device of {instance.instance_id}, which is "
                    f"{instance.state}: stop it first.",
                )
            volume.attach_state = "detaching"
            await self.store.save_volume(volume)  # written before the CC hears of it
            await self._send_detach(volume, force)
        return volume

    async def _send_detach(self, volume: Volume, force: bool = False) -> None:
        request = msg.DetachVolumeRequest(volume_id=volume.volume_id, instance_id=volume.instance_id, force=force)
        try:
            answer = await self._call(volume.zone, "DetachVolume", request, msg.StorageVolume)
        except RpcError as err:
            if err.code == "IncorrectState":  # the CC has no attachment: nothing to undo
                self._clear_attachment(volume)
                await self.store.save_volume(volume)
            else:
                log.warning("%s: DetachVolume: %s (will retry)", volume.volume_id, err)
            return
        await self._settle(volume, answer)

    # --- instances that end -------------------------------------------------------------------------------
    def instances_changed(self, instances: list[Any]) -> None:
        """Compute's state listener: volumes of terminated instances are detached (and deleted when marked
        DeleteOnTermination)."""
        ended = {i.instance_id for i in instances if i.state == "terminated"}
        if ended and any(v.instance_id in ended for v in self.store.volumes.values()):
            self._wake.set()

    async def _release_ended(self) -> None:
        for volume in list(self.store.volumes.values()):
            if not volume.instance_id:
                continue
            instance = self.compute.store.instances.get(volume.instance_id)
            if instance is not None and instance.state != "terminated":
                continue
            async with self._lock(volume.volume_id):
                if volume.state == "creating":
                    continue  # the CC's answer first: then it can be deleted
                if volume.attach_state and volume.attach_state != "detaching":
                    volume.attach_state = "detaching"
                    await self.store.save_volume(volume)
                if volume.attach_state == "detaching":
                    # A launch that failed leaves nothing behind, whatever DeleteOnTermination said.
                    failed = volume.boot and instance is not None and instance.state_reason.startswith("Server.")
                    delete = volume.delete_on_termination or failed
                    await self._send_detach(volume, force=True)
                    if delete and not volume.attach_state:
                        await self._delete(volume)

    # --- snapshots ----------------------------------------------------------------------------------------
    async def create_snapshot(self, principal: Principal, volume_id: str, description: str = "") -> Snapshot:
        return await self.snapshot_volume(self.volume(volume_id, principal), description)

    def new_snapshot_id(self) -> str:
        """An id for a snapshot to be taken later (CreateImage names its snapshots before it takes them)."""
        return self._new_id("snap")

    async def snapshot_volume(self, volume: Volume, description: str = "", snapshot_id: str = "") -> Snapshot:
        """A snapshot of the (caller's) volume, under `snapshot_id` if given (idempotent: one taken is returned)."""
        if snapshot_id and snapshot_id in self.store.snapshots:
            return self.store.snapshots[snapshot_id]
        if len(description) > 255:
            raise ComputeError("InvalidParameterValue", "Description: at most 255 characters")
        if volume.state not in ("available", "in-use"):
            raise ComputeError("IncorrectState", f"The volume '{volume.volume_id}' is {volume.state}.")
        owned = [s for s in self.store.snapshots.values() if s.owner_id == volume.owner_id]
        if self.settings.quota_snapshots and len(owned) >= self.settings.quota_snapshots:
            raise ComputeError(
                "SnapshotLimitExceeded", f"At most {self.settings.quota_snapshots} snapshots per account."
            )
        now = time.time()
        snapshot = Snapshot(
            snapshot_id=snapshot_id or self._new_id("snap"),
            owner_id=volume.owner_id,
            volume_id=volume.volume_id,
            volume_size=volume.size_gb,
            zone=volume.zone,
            state="pending",
            start_time=now,
            updated_at=now,
            description=description,
        )
        self.store.snapshots[snapshot.snapshot_id] = snapshot
        await self.store.save_snapshot(snapshot)  # written before the CC hears of it
        await self._send_snapshot(snapshot, raise_refusal=True)
        return snapshot

    async def _send_snapshot(self, snapshot: Snapshot, raise_refusal: bool = False) -> None:
        request = msg.CreateSnapshotRequest(snapshot_id=snapshot.snapshot_id, volume_id=snapshot.volume_id)
        try:
            answer = await self._call(snapshot.zone, "CreateSnapshot", request, msg.StorageSnapshot)
        except RpcError as err:
            if err.status >= 500 or isinstance(err, PeerUnreachable):
                log.warning("%s: CreateSnapshot: %s (will retry)", snapshot.snapshot_id, err)
                return
            snapshot.state, snapshot.detail = "error", err.message[:500]
            await self.store.save_snapshot(snapshot)
            if raise_refusal:
                raise ComputeError("IncorrectState", f"The snapshot could not be taken: {err.message}") from None
            return
        await self._settle_snapshot(snapshot, answer)

    async def _settle_snapshot(self, snapshot: Snapshot, seen: msg.StorageSnapshot) -> None:
        if snapshot.state == "pending":
            if seen.state in ("completed", "error"):
                snapshot.state, snapshot.detail = seen.state, seen.detail
                snapshot.progress = 100 if seen.state == "completed" else seen.progress
                await self.store.save_snapshot(snapshot)
            elif seen.progress != snapshot.progress:
                snapshot.progress = seen.progress  # in memory: progress is not a state

    async def delete_snapshot(self, principal: Principal, snapshot_id: str) -> None:
        snapshot = self.snapshot(snapshot_id, principal)
        users = [i.image_id for i in self.compute.store.images.values() if snapshot.snapshot_id in i.snapshot_ids]
        if users:
            raise ComputeError(
                "InvalidSnapshot.InUse", f"The snapshot {snapshot.snapshot_id} is currently in use by {users[0]}"
            )
        await self._delete_snapshot(snapshot)

    async def _delete_snapshot(self, snapshot: Snapshot) -> None:
        if snapshot.state != "deleting":
            snapshot.state = "deleting"
            await self.store.save_snapshot(snapshot)  # written before the CC hears of it
        try:
            request = msg.SnapshotIdRequest(snapshot_id=snapshot.snapshot_id)
            answer = await self._call(snapshot.zone, "DeleteSnapshot", request, msg.StorageSnapshot)
        except RpcError as err:
            log.warning("%s: DeleteSnapshot: %s (will retry)", snapshot.snapshot_id, err)
            return
        if answer.state == "gone":
            await self.store.forget_snapshot(snapshot)
            for listener in self.on_forget:
                await listener([snapshot.snapshot_id])

    async def set_permissions(self, snapshot: Snapshot, add: set[str], remove: set[str], reset: bool = False) -> None:
        if reset:
            snapshot.permissions.clear()
            snapshot.public = False
        if "all" in add:
            snapshot.public = True
        if "all" in remove:
            snapshot.public = False
        snapshot.permissions |= add - {"all"}
        snapshot.permissions -= remove
        await self.store.save_snapshot(snapshot, permissions=True)

    # --- reconcile ----------------------------------------------------------------------------------------
    async def refresh(self, zone: str) -> msg.DescribeStorageResponse | None:
        try:
            answer = await self.compute.cc.describe_storage(zone)
        except (RpcError, ComputeError) as err:
            log.debug("DescribeStorage %s: %s", zone, err)
            return None
        self.zones[zone] = ZoneStorage(answer.capacity_gb, answer.allocated_gb, time.monotonic())
        return answer

    async def reconcile_zone(self, zone: str) -> None:
        asked_at = time.time()
        answer = await self.refresh(zone)
        if answer is None:
            return
        seen = {v.volume_id: v for v in answer.volumes}
        for volume in [v for v in self.store.volumes.values() if v.zone == zone]:
            async with self._lock(volume.volume_id):
                if self.store.volumes.get(volume.volume_id) is not volume or volume.updated_at >= asked_at:
                    continue  # gone, or changed since the CC's answer was asked for: the next round sees it
                state = seen.get(volume.volume_id)
                if volume.state == "deleting":
                    await self._delete(volume)
                elif state is None:
                    if volume.state == "creating":
                        await self._send_create(volume)
                    elif volume.state != "error":
                        volume.state, volume.detail = "error", "the zone's storage has no such volume"
                        await self.store.save_volume(volume)
                else:
                    await self._settle(volume, state)
                    if volume.attach_state == "attaching" and state.attachment is None:
                        # The CC has no attachment (never heard, or undid a failed one): ask again while the
                        # instance runs; one the CC is still undoing is waited for.
                        instance = self.compute.store.instances.get(volume.instance_id)
                        if instance is not None and instance.state == "running":
                            await self._send_attach(volume)
                        else:
                            volume.attach_state = "detaching"
                            await self.store.save_volume(volume)
                    if volume.attach_state == "detaching":
                        # Forced only when the instance is over: a live guest keeps its disk until its node says
                        # it let go (the node may just be restarting).
                        instance = self.compute.store.instances.get(volume.instance_id)
                        ended = instance is None or instance.state == "terminated"
                        await self._send_detach(volume, force=ended)
        snaps = {s.snapshot_id: s for s in answer.snapshots}
        for snapshot in [s for s in self.store.snapshots.values() if s.zone == zone and s.updated_at < asked_at]:
            stored = snaps.get(snapshot.snapshot_id)
            if snapshot.state == "deleting":
                await self._delete_snapshot(snapshot)
            elif snapshot.state == "pending":
                if stored is None:
                    await self._send_snapshot(snapshot)
                else:
                    await self._settle_snapshot(snapshot, stored)

    async def reconcile(self) -> None:
        await self._release_ended()
        zones = {v.zone for v in self.store.volumes.values()} | {s.zone for s in self.store.snapshots.values()}
        zones |= set(self.compute.cc.clusters)
        await asyncio.gather(*(self.reconcile_zone(z) for z in zones if z in self.compute.cc.clusters))
        if self.roots is not None:
            await self.roots.settle_images()  # CreateImage's images, once their snapshots are done

    def busy(self) -> bool:
        """Something is in a transitional state: poll often."""
        return any(v.state in ("creating", "deleting") or v.attach_state in ("attaching", "detaching")
                   for v in self.store.volumes.values()) or any(
            s.state in ("pending", "deleting") for s in self.store.snapshots.values()) or (
            self.roots is not None and self.roots.rebooting())  # fmt: skip

    async def _reconcile_loop(self) -> None:
        while True:
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("ebs reconcile failed")
            interval = 0.5 if self.busy() else self.settings.poll_interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
