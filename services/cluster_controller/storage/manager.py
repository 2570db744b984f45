"""The zone's block storage: volume files, their iSCSI exports and attachments, snapshots; state machines whose
every step is written before it is acted on, and a reconcile loop that finishes or undoes what a crash cut short.

Volumes live in files exported over iSCSI (the default) or, with KOALA_EBS_BACKEND=rbd, in Ceph RBD images
(rbd_volumes.py: no export, the node's QEMU opens the image itself; snapshots are RBD snapshots).

Volume: creating -> available -> deleting -> (gone), or error. Attachment (one per volume): attaching -> attached
-> detaching -> (gone). Snapshot: pending -> completed | error; deleting -> (gone). Operations on one volume are
serialised by a per-volume lock; every operation is idempotent by its id, so the CLC simply repeats one it is not
sure about.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from common.hostcmd import Runner, SubprocessRunner
from common.ids import is_id, normalize
from common.messages.cc_nc import BootVolume, LaunchVolume
from common.messages.storage import (
    AttachVolumeRequest,
    CreateSnapshotRequest,
    CreateVolumeRequest,
    DescribeStorageResponse,
    DetachVolumeRequest,
    IscsiTarget,
    NodeAttachRequest,
    NodeDetachRequest,
    StorageAttachment,
    StorageSnapshot,
    StorageVolume,
)
from common.rpc import PeerUnreachable, RpcError
from common.tasks import TaskSet
from services.cluster_controller.nc_client import NcClient
from services.cluster_controller.storage import extents, files, volume_fs
from services.cluster_controller.storage.rbd_volumes import RbdVolumes
from services.cluster_controller.storage.settings import StorageSettings
from services.cluster_controller.storage.snapshots import CHUNK, SnapshotStore
from services.cluster_controller.storage.store import Attachment, Snapshot, StorageStore, Volume
from services.cluster_controller.storage.tgt import Tgt, TgtError

log = logging.getLogger("koala.cc.storage")
IQN_BASE = "iqn.2010-01.org.koala"
_DEVICE = re.compile(r"^/dev/(sd|xvd|vd)[b-z]$")
NODE_TIMEOUT = 30.0

# The live instance's node: instance id -> (node URL, node id), or None when it is not running in this zone.
NodeOf = Callable[[str], tuple[str, str] | None]


def _fail(status: int, code: str, message: str) -> RpcError:
    return RpcError(status, code, message)


def check_id(value: str, prefix: str, code: str) -> str:
    if not is_id(value, prefix):
        raise _fail(400, code, f"invalid id: {value[:40]!r}")
    return normalize(value)


class StorageManager:
    def __init__(self, config: StorageSettings, state_dir: Path, zone: str, nodes: NcClient, runner: Runner | None):
        self.config, self.zone, self.nodes = config, zone, nodes
        self.state_dir = Path(state_dir)
        self.dir = Path(config.KOALA_EBS_DIR or self.state_dir / "volumes")
        host, port = config.KOALA_EBS_PORTAL.rsplit(":", 1)
        self.portal_host, self.portal_port = host, int(port)
        self.tgt = Tgt(
            runner or SubprocessRunner(),
            config.KOALA_EBS_PORTAL,
            config.KOALA_EBS_TGT_CONTROL or int(port) % 32768,  # tgtd takes 0..32767
            config.KOALA_EBS_TGTD == "spawn",
            self.state_dir / "tgt",
        )
        self.snapshot_store = SnapshotStore(config, re.sub(r"[^a-z0-9.-]", "-", zone.lower()))
        self.rbd = RbdVolumes(config, config.KOALA_EBS_RBD_POOL, zone) if config.KOALA_EBS_BACKEND == "rbd" else None
        self.iqn_prefix = f"{IQN_BASE}:{re.sub(r'[^a-z0-9.-]', '-', zone.lower())}."
        self.store: StorageStore | None = None
        self.volumes: dict[str, Volume] = {}
        self.attachments: dict[str, Attachment] = {}
        self.snapshots: dict[str, Snapshot] = {}
        self.node_of: NodeOf = lambda instance_id: None
        # Whether the instance is being migrated (its node changes: attachments wait until it settled).
        self.migrating: Callable[[str], bool] = lambda instance_id: False
        # Whether the cluster has a live run of the instance (placed, perhaps not yet confirmed by its node).
        self.instance_live: Callable[[str], bool] = lambda instance_id: self.node_of(instance_id) is not None
        self.capacity_gb = config.KOALA_EBS_CAPACITY_GB
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks = TaskSet(log, expected=(RpcError,))
        self._jobs: dict[str, asyncio.Task[Any]] = {}  # volume creations and snapshots in progress, by id
        # Tells the CLC that a volume or snapshot settled (set by install); the CLC's polls are the safety net.
        self.notify: Callable[[], Coroutine[Any, Any, None]] | None = None
        self._push: asyncio.Task[None] | None = None
        self._push_again = False
        self._loop: asyncio.Task[None] | None = None
        self.loaded = asyncio.Event()  # the records are read (a migration the CC resumes may ask before)

    # --- life ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self.dir.mkdir, parents=True, exist_ok=True)
        if self.rbd is not None:
            await self.rbd.start()
        elif self.config.KOALA_EBS_XFS_IMAGE_GB:
            await volume_fs.ensure(self.dir, self.config.KOALA_EBS_XFS_IMAGE_GB, self.tgt.runner)
        self.store = await StorageStore.open(self.state_dir / "storage.db")
        self.volumes, self.attachments, self.snapshots = await self.store.load()
        self.loaded.set()
        if not self.capacity_gb:
            self.capacity_gb = await (self.rbd.capacity_gb() if self.rbd else files.filesystem_gb(self.dir))
        for volume in self.volumes.values():  # finish what a crash interrupted
            if volume.state == "creating":
                self._job(volume.volume_id, self._build(volume))
            elif volume.state == "deleting":
                self._spawn(self.delete(volume.volume_id), f"delete {volume.volume_id}")
        for snapshot in self.snapshots.values():
            if snapshot.state == "pending":
                self._job(snapshot.snapshot_id, self._take(snapshot))
            elif snapshot.state == "deleting":
                self._spawn(self.delete_snapshot(snapshot.snapshot_id), f"delete {snapshot.snapshot_id}")
        log.info(
            "storage: %d volumes (%d GiB of %d), %d attachments, %d snapshots, %s",
            len(self.volumes),
            self.allocated_gb(),
            self.capacity_gb,
            len(self.attachments),
            len(self.snapshots),
            f"RBD pool {self.rbd.pool}" if self.rbd else f"portal {self.config.KOALA_EBS_PORTAL}",
        )
        self._loop = asyncio.create_task(self._reconcile_loop(), name="storage reconcile")

    async def stop(self) -> None:
        tasks = [t for t in (self._loop, *self._tasks, *self._jobs.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.rbd is None and not self.attachments and await self.tgt.running():
            await self.tgt.stop_daemon()  # nothing exported: no daemon left behind
        self.snapshot_store.close()
        if self.rbd is not None:
            await self.rbd.close()
        if self.store is not None:
            await self.store.close()
            self.store = None

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        return self._tasks.spawn(coro, name)

    def _job(self, key: str, coro: Coroutine[Any, Any, Any]) -> None:
        if key in self._jobs and not self._jobs[key].done():
            coro.close()
            return
        task = self._spawn(coro, f"job {key}")
        self._jobs[key] = task
        task.add_done_callback(lambda _: self._jobs.pop(key, None) if self._jobs.get(key) is task else None)

    def changed(self) -> None:
        """Tell the CLC that something settled (coalesced: one push in flight, one more if needed after it)."""
        if self.notify is None:
            return
        if self._push is not None and not self._push.done():
            self._push_again = True
            return
        self._push = self._spawn(self._push_changed(), "storage changed")

    async def _push_changed(self) -> None:
        while self.notify is not None:
            self._push_again = False
            try:
                await self.notify()
            except RpcError as err:  # PeerUnreachable too: the CLC's next poll sees it
                log.debug("StorageChanged not delivered: %s", err)
            if not self._push_again:
                return

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    @property
    def _store(self) -> StorageStore:
        if self.store is None:
            raise _fail(503, "NotReady", "the storage is starting")
        return self.store

    # --- queries ------------------------------------------------------------------------------------------
    def allocated_gb(self) -> int:
        return sum(v.size_gb for v in self.volumes.values())

    def path(self, volume: Volume) -> Path:
        return files.volume_path(self.dir, volume.volume_id)

    def iqn(self, volume: Volume) -> str:
        return f"{self.iqn_prefix}{volume.volume_id}"

    def volume_info(self, volume_id: str) -> StorageVolume:
        volume = self.volumes.get(volume_id)
        if volume is None:
            return StorageVolume(volume_id=volume_id, state="gone")
        attachment = self.attachments.get(volume_id)
        return StorageVolume(
            volume_id=volume.volume_id,
            state=volume.state,
            size_gb=volume.size_gb,
            snapshot_id=volume.snapshot_id,
            detail=volume.detail,
            attachment=None
            if attachment is None
            else StorageAttachment(
                instance_id=attachment.instance_id,
                device=attachment.device,
                state=attachment.state,
                node=attachment.node_url,
                detail=attachment.detail,
            ),
        )

    def snapshot_info(self, snapshot_id: str) -> StorageSnapshot:
        snapshot = self.snapshots.get(snapshot_id)
        if snapshot is None:
            return StorageSnapshot(snapshot_id=snapshot_id, state="gone")
        return StorageSnapshot(
            snapshot_id=snapshot.snapshot_id,
            volume_id=snapshot.volume_id,
            state=snapshot.state,
            progress=snapshot.progress,
            size_gb=snapshot.size_gb,
            stored_bytes=snapshot.stored_bytes,
            detail=snapshot.detail,
        )

    def describe(self, volume_ids: list[str], snapshot_ids: list[str] | None = None) -> DescribeStorageResponse:
        wanted = [normalize(v) for v in volume_ids] or sorted(self.volumes)
        snaps = [normalize(s) for s in snapshot_ids or []] or sorted(self.snapshots)
        return DescribeStorageResponse(
            zone=self.zone,
            capacity_gb=self.capacity_gb,
            allocated_gb=self.allocated_gb(),
            volumes=[self.volume_info(v) for v in wanted],
            snapshots=[self.snapshot_info(s) for s in snaps],
        )

    # --- volumes ------------------------------------------------------------------------------------------
    async def create(self, request: CreateVolumeRequest) -> StorageVolume:
        volume_id = check_id(request.volume_id, "vol", "InvalidVolumeID.Malformed")
        snapshot_id = (
            check_id(request.snapshot_id, "snap", "InvalidSnapshotID.Malformed") if request.snapshot_id else ""
        )
        async with self._lock(volume_id):
            existing = self.volumes.get(volume_id)
            if existing is not None:
                if existing.size_gb != request.size_gb or existing.snapshot_id != snapshot_id:
                    raise _fail(409, "InvalidVolumeID.Duplicate", f"{volume_id} exists with other parameters")
                return self.volume_info(volume_id)
            if self.allocated_gb() + request.size_gb > self.capacity_gb:
                raise _fail(
                    409,
                    "InsufficientVolumeCapacity",
                    f"zone {self.zone} has {self.capacity_gb - self.allocated_gb()} GiB free, {request.size_gb} asked",
                )
            if snapshot_id and not self.snapshots_enabled:
                raise _fail(400, "SnapshotsUnavailable", "this zone has no snapshot store (KOALA_EBS_S3_URL)")
            if snapshot_id and self.rbd is not None:
                source = self.snapshots.get(snapshot_id)
                if source is None or source.state != "completed":
                    raise _fail(404, "InvalidSnapshot.NotFound", f"no completed snapshot {snapshot_id} in this zone")
            tids = {v.tid for v in self.volumes.values()}
            tid = next(n for n in range(1, len(tids) + 2) if n not in tids)
            volume = Volume(volume_id, request.size_gb, "creating", tid, snapshot_id)
            await self._store.save_volume(volume)  # written before the file exists
            self.volumes[volume_id] = volume
        if not snapshot_id:
            await self._build(volume)  # a sparse file: answered at once, available
        else:
            self._job(volume_id, self._build(volume))
        return self.volume_info(volume_id)

    async def _build(self, volume: Volume) -> None:
        """Make the volume's file (empty, or the snapshot's blocks), then mark it available."""
        try:
            if self.rbd is not None and volume.snapshot_id:
                source = self.snapshots[volume.snapshot_id]
                await self.rbd.clone(volume.volume_id, volume.size_gb, source.volume_id, source.snapshot_id)
            elif self.rbd is not None:
                await self.rbd.create(volume.volume_id, volume.size_gb)
            elif volume.snapshot_id:
                await self.snapshot_store.restore(volume.snapshot_id, self.path(volume), volume.size_gb)
            else:
                await files.create_sparse(self.path(volume), volume.size_gb)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.warning("%s: creation failed: %s", volume.volume_id, err)
            async with self._lock(volume.volume_id):
                if self.volumes.get(volume.volume_id) is volume and volume.state == "creating":
                    volume.state, volume.detail = "error", f"creation failed: {err}"[:500]
                    await self._store.save_volume(volume)
                    self.changed()
            return
        async with self._lock(volume.volume_id):
            if self.volumes.get(volume.volume_id) is volume and volume.state == "creating":
                volume.state, volume.detail = "available", ""
                await self._store.save_volume(volume)
                if volume.snapshot_id:
                    self.changed()  # made in the background: the CLC waits for it
                log.info("%s: available (%d GiB%s)", volume.volume_id, volume.size_gb,
                         f" from {volume.snapshot_id}" if volume.snapshot_id else "")  # fmt: skip

    async def delete(self, volume_id: str) -> StorageVolume:
        volume_id = check_id(volume_id, "vol", "InvalidVolumeID.Malformed")
        async with self._lock(volume_id):
            volume = self.volumes.get(volume_id)
            if volume is None:
                return self.volume_info(volume_id)
            if volume_id in self.attachments:
                raise _fail(409, "VolumeInUse", f"{volume_id} is attached to {self.attachments[volume_id].instance_id}")
            if volume.state != "deleting":
                volume.state = "deleting"
                await self._store.save_volume(volume)  # written before the file goes
            job = self._jobs.get(volume_id)
            if job is not None and job is not asyncio.current_task():
                job.cancel()
                await asyncio.gather(job, return_exceptions=True)
            await self._remove_data(volume_id)
            await self._store.delete_volume(volume_id)
            del self.volumes[volume_id]
            log.info("%s: deleted", volume_id)
        return self.volume_info(volume_id)

    @property
    def snapshots_enabled(self) -> bool:
        return self.rbd is not None or self.snapshot_store.enabled

    async def _remove_data(self, volume_id: str) -> None:
        """A deleted volume's file, or its RBD image unless snapshots of it still live there (the image goes with
        its last snapshot, in delete_snapshot or the reconcile loop)."""
        if self.rbd is None:
            await files.remove(files.volume_path(self.dir, volume_id))
            for frozen_volume, _, path in await files.frozen_files(self.dir):
                if frozen_volume == volume_id:
                    await files.remove(path)
        elif not any(s.volume_id == volume_id for s in self.snapshots.values()):
            if not await self.rbd.remove(volume_id):
                log.info("%s: its image keeps snapshots that clones use; removed later", volume_id)

    # --- attachments --------------------------------------------------------------------------------------
    async def attach(self, request: AttachVolumeRequest) -> StorageVolume:
        volume_id = check_id(request.volume_id, "vol", "InvalidVolumeID.Malformed")
        instance_id = check_id(request.instance_id, "i", "InvalidInstanceID.Malformed")
        if not _DEVICE.match(request.device):
            raise _fail(400, "InvalidParameterValue", f"invalid device {request.device[:32]!r} (e.g. /dev/sdf)")
        if self.migrating(instance_id):
            raise _fail(409, "IncorrectInstanceState", f"{instance_id} is being migrated")
        async with self._lock(volume_id):
            volume = self.volumes.get(volume_id)
            if volume is None:
                raise _fail(404, "InvalidVolume.NotFound", f"no volume {volume_id} in zone {self.zone}")
            if volume.state != "available":
                raise _fail(409, "IncorrectState", f"{volume_id} is {volume.state}")
            attachment = self.attachments.get(volume_id)
            if attachment is not None:
                if attachment.instance_id != instance_id:
                    raise _fail(409, "VolumeInUse", f"{volume_id} is attached to {attachment.instance_id}")
                if attachment.state == "attached":
                    return self.volume_info(volume_id)
                if attachment.state == "detaching":
                    raise _fail(409, "IncorrectState", f"{volume_id} is detaching")
            else:
                node = self.node_of(instance_id)
                if node is None:
                    raise _fail(409, "IncorrectInstanceState", f"{instance_id} is not running in zone {self.zone}")
                for other in self.attachments.values():
                    if other.instance_id == instance_id and other.device == request.device:
                        raise _fail(409, "InvalidParameterValue", f"{request.device} is already used on {instance_id}")
                initiator = f"{IQN_BASE}:node.{instance_id}.{secrets.token_hex(12)}"
                attachment = Attachment(volume_id, instance_id, node[0], request.device, initiator, "attaching")
                await self._store.save_attachment(attachment)  # written before anything is exported
                self.attachments[volume_id] = attachment
            try:
                await self._plug(volume, attachment)
            except (RpcError, TgtError) as err:
                log.warning("%s: attach to %s failed: %s", volume_id, instance_id, err)
                attachment.state, attachment.detail = "detaching", f"attach failed: {err}"[:500]
                await self._store.save_attachment(attachment)
                await self._unplug(volume, attachment, force=False)
                if isinstance(err, TgtError):
                    raise _fail(503, "StorageUnavailable", str(err)) from None
                raise
        return self.volume_info(volume_id)

    async def boot_attach(self, instance_id: str, node_url: str, volumes: list[LaunchVolume]) -> list[BootVolume]:
        """Export the volumes an instance boots with to its node (before the node creates the domain): each
        attachment is recorded `attached` (the node plugs the disk in at boot) before it is exported, so the
        reconcile loop keeps the export, or removes it once the run is over. An RBD volume is not exported: the
        node is told the image's place."""
        instance_id = check_id(instance_id, "i", "InvalidInstanceID.Malformed")
        result = []
        for item in volumes:
            volume_id = check_id(item.volume_id, "vol", "InvalidVolumeID.Malformed")
            async with self._lock(volume_id):
                volume = self.volumes.get(volume_id)
                if volume is None or volume.state != "available":
                    raise _fail(409, "IncorrectState", f"{volume_id} is {volume.state if volume else 'not here'}")
                attachment = self.attachments.get(volume_id)
                if attachment is not None and (attachment.instance_id != instance_id or attachment.state != "attached"):
                    if attachment.instance_id != instance_id and self.instance_live(attachment.instance_id):
                        raise _fail(409, "VolumeInUse", f"{volume_id} is attached to {attachment.instance_id}")
                    attachment.state = "detaching"  # left from an earlier run: undone first
                    await self._store.save_attachment(attachment)
                    if not await self._unplug(volume, attachment, force=True):
                        raise _fail(503, "StorageUnavailable", f"{volume_id}: its earlier export is still there")
                    attachment = None
                if attachment is None:
                    initiator = f"{IQN_BASE}:node.{instance_id}.{secrets.token_hex(12)}"
                    attachment = Attachment(volume_id, instance_id, node_url, item.device, initiator, "attached")
                elif attachment.node_url != node_url:
                    attachment.node_url = node_url  # placed on another node this time (a failover or a start)
                await self._store.save_attachment(attachment)  # written before anything is exported
                self.attachments[volume_id] = attachment
                try:
                    await self._export(volume, attachment)
                except TgtError as err:
                    raise _fail(503, "StorageUnavailable", str(err)) from None
                result.append(BootVolume(
                    volume_id=volume_id, device=item.device, root=item.root,
                    target=None if self.rbd is not None else self._target(volume, attachment),
                    rbd=self.rbd.target(volume_id) if self.rbd is not None else None,
                ))  # fmt: skip
        return result

    def _target(self, volume: Volume, attachment: Attachment, initiator: str = "") -> IscsiTarget:
        return IscsiTarget(host=self.portal_host, port=self.portal_port, iqn=self.iqn(volume), lun=1,
                           initiator=initiator or attachment.initiator)  # fmt: skip

    # --- attachments that follow a live migration (services/cluster_controller/migration.py) --------------------
    def move_refusal(self, instance_id: str) -> str:
        """Why the instance's volumes cannot move with it now ('' when they can)."""
        for volume_id, attachment in self.attachments.items():
            if attachment.instance_id == instance_id and attachment.state != "attached":
                return f"its volume {volume_id} is {attachment.state}"
        return ""

    async def begin_move(self, instance_id: str, node_url: str) -> list[NodeAttachRequest]:
        """Each volume attached to the instance, as the node `node_url` must open it before the guest moves there:
        an initiator name of that node's own, recorded (move_*) before the export admits it besides the current one
        (an RBD image needs nothing: the node opens it with its own key). The volumes are shared, never copied."""
        await self.loaded.wait()
        result = []
        for volume_id, attachment in sorted(self.attachments.items()):
            if attachment.instance_id != instance_id:
                continue
            async with self._lock(volume_id):
                volume = self.volumes.get(volume_id)
                if volume is None or self.attachments.get(volume_id) is not attachment:
                    continue
                if attachment.state != "attached":
                    raise _fail(409, "IncorrectState", f"{volume_id} is {attachment.state}")
                if attachment.move_node_url != node_url or not attachment.move_initiator:
                    attachment.move_node_url = node_url
                    attachment.move_initiator = f"{IQN_BASE}:node.{instance_id}.{secrets.token_hex(12)}"
                    await self._store.save_attachment(attachment)  # written before the export admits it
                try:
                    await self._export(volume, attachment)
                except TgtError as err:
                    raise _fail(503, "StorageUnavailable", str(err)) from None
                result.append(
                    NodeAttachRequest(
                        instance_id=instance_id,
                        volume_id=volume_id,
                        device=attachment.device,
                        target=None if self.rbd else self._target(volume, attachment, attachment.move_initiator),
                        rbd=self.rbd.target(volume_id) if self.rbd is not None else None,
                    )
                )
        return result

    async def end_move(self, instance_id: str, node_url: str, moved: bool) -> None:
        """The migration to `node_url` settled: the attachments follow the instance there (`moved`: the source's
        initiator is no longer admitted) or stay where they were (the target's is no longer admitted). Idempotent."""
        await self.loaded.wait()
        for volume_id, attachment in list(self.attachments.items()):
            if attachment.instance_id != instance_id or not attachment.move_node_url:
                continue
            async with self._lock(volume_id):
                if self.attachments.get(volume_id) is not attachment:
                    continue
                if moved and attachment.move_node_url == node_url:
                    attachment.node_url, attachment.initiator = attachment.move_node_url, attachment.move_initiator
                attachment.move_node_url = attachment.move_initiator = ""
                await self._store.save_attachment(attachment)  # written before the export changes
                volume = self.volumes.get(volume_id)
                if volume is not None and attachment.state == "attached":
                    try:
                        await self._export(volume, attachment)
                    except TgtError as err:  # the reconcile loop makes the export match the record
                        log.warning("%s: export after the migration: %s (will retry)", volume_id, err)
            log.info("%s: attachment to %s %s %s", volume_id, instance_id, "moved to" if moved else "stays on",
                     attachment.node_url)  # fmt: skip

    async def _export(self, volume: Volume, attachment: Attachment) -> None:
        """The volume's target exists, backed by its file, admitting this attachment's initiator only, and the
        migration target's while the instance moves (nothing to do for an RBD image: the node opens it with its own
        Ceph key)."""
        if self.rbd is not None:
            return
        await self.tgt.ensure_running()
        target = (await self.tgt.targets()).get(volume.tid)
        if target is not None and (target.iqn != self.iqn(volume) or target.backing.get(1) != str(self.path(volume))):
            await self.tgt.remove(volume.tid)  # a stale target under this tid
            target = None
        if target is None:
            await self.tgt.add(volume.tid, self.iqn(volume), self.path(volume))
            acl: list[str] = []
        else:
            acl = target.acl
        wanted = [name for name in (attachment.initiator, attachment.move_initiator) if name]  # two while it moves
        for name in acl:
            if name not in wanted:
                await self.tgt.unbind(volume.tid, name)
        for name in wanted:
            if name not in acl:
                await self.tgt.bind(volume.tid, name)

    async def _plug(self, volume: Volume, attachment: Attachment) -> None:
        await self._export(volume, attachment)
        request = NodeAttachRequest(
            instance_id=attachment.instance_id,
            volume_id=volume.volume_id,
            device=attachment.device,
            target=None if self.rbd is not None else self._target(volume, attachment),
            rbd=self.rbd.target(volume.volume_id) if self.rbd is not None else None,
        )
        answer = await self.nodes.attach_volume(attachment.node_url, request, NODE_TIMEOUT)
        attachment.state, attachment.detail = "attached", answer.device
        await self._store.save_attachment(attachment)
        log.info("%s: attached to %s as %s (%s)", volume.volume_id, attachment.instance_id, attachment.device,
                 answer.device)  # fmt: skip

    async def _unplug(self, volume: Volume, attachment: Attachment, force: bool) -> bool:
        """Take the volume out of the guest, then remove the export; True when done (the record is gone). Without
        `force`, a node that does not answer leaves the attachment `detaching` for the reconcile loop."""
        try:
            await self.nodes.detach_volume(
                attachment.node_url,
                NodeDetachRequest(instance_id=attachment.instance_id, volume_id=volume.volume_id),
                NODE_TIMEOUT,
            )
        except RpcError as err:  # PeerUnreachable too
            if err.status != 404 and not force:  # 404: the instance is gone from its node, and the disk with it
                log.warning("%s: detach from %s: %s (will retry)", volume.volume_id, attachment.instance_id, err)
                return False
        try:
            if self.rbd is None and await self.tgt.running():
                target = (await self.tgt.targets()).get(volume.tid)
                if target is not None:
                    await self.tgt.remove(volume.tid)
        except TgtError as err:
            log.warning("%s: removing its export: %s (will retry)", volume.volume_id, err)
            return False
        await self._store.delete_attachment(volume.volume_id)
        if self.attachments.get(volume.volume_id) is attachment:
            del self.attachments[volume.volume_id]
        log.info("%s: detached from %s", volume.volume_id, attachment.instance_id)
        return True

    async def detach(self, request: DetachVolumeRequest) -> StorageVolume:
        volume_id = check_id(request.volume_id, "vol", "InvalidVolumeID.Malformed")
        async with self._lock(volume_id):
            volume = self.volumes.get(volume_id)
            attachment = self.attachments.get(volume_id)
            if volume is None or attachment is None:
                raise _fail(409, "IncorrectState", f"{volume_id} is not attached")
            if request.instance_id and normalize(request.instance_id) != attachment.instance_id:
                raise _fail(
                    404, "InvalidAttachment.NotFound", f"{volume_id} is not attached to {request.instance_id[:20]}"
                )
            if self.migrating(attachment.instance_id) and attachment.state != "detaching":
                raise _fail(409, "IncorrectInstanceState", f"{attachment.instance_id} is being migrated")
            if attachment.state != "detaching":
                attachment.state = "detaching"
                await self._store.save_attachment(attachment)  # written before the node hears of it
            await self._unplug(volume, attachment, request.force)
        return self.volume_info(volume_id)

    # --- snapshots ----------------------------------------------------------------------------------------
    async def create_snapshot(self, request: CreateSnapshotRequest) -> StorageSnapshot:
        snapshot_id = check_id(request.snapshot_id, "snap", "InvalidSnapshotID.Malformed")
        volume_id = check_id(request.volume_id, "vol", "InvalidVolumeID.Malformed")
        if not self.snapshots_enabled:
            raise _fail(400, "SnapshotsUnavailable", "this zone has no snapshot store (KOALA_EBS_S3_URL)")
        async with self._lock(volume_id):
            existing = self.snapshots.get(snapshot_id)
            if existing is not None:
                return self.snapshot_info(snapshot_id)
            volume = self.volumes.get(volume_id)
            if volume is None or volume.state != "available":
                raise _fail(409, "IncorrectState", f"{volume_id} is {volume.state if volume else 'not in this zone'}")
            parents = [
                s
                for s in self.snapshots.values()
                if s.volume_id == volume_id and s.state == "completed" and (s.chunks or self.rbd is not None)
            ]
            parent = max(parents, key=lambda s: s.created_at).snapshot_id if parents else ""
            snapshot = Snapshot(snapshot_id, volume_id, volume.size_gb, "pending", parent=parent)
            await self._store.save_snapshot(snapshot)  # written before any block is read
            self.snapshots[snapshot_id] = snapshot
        self._job(snapshot_id, self._take(snapshot))
        return self.snapshot_info(snapshot_id)

    async def _take(self, snapshot: Snapshot) -> None:
        def progress(percent: int) -> None:
            snapshot.progress = percent  # from the snapshot's thread: an int, read by describe

        try:
            if self.rbd is not None:  # an RBD snapshot: taken at once, copy-on-write
                chunks: list[str] = []
                stored = await self.rbd.snapshot(snapshot.volume_id, snapshot.snapshot_id, snapshot.parent)
            else:
                chunks, stored = await self._take_chunks(snapshot, progress)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.warning("%s: snapshot failed: %s", snapshot.snapshot_id, err)
            snapshot.state, snapshot.detail = "error", f"{type(err).__name__}: {err}"[:500]
            await self._store.save_snapshot(snapshot)
            self.changed()
            return
        snapshot.chunks, snapshot.stored_bytes = chunks, stored  # known even if it is being deleted meanwhile
        if snapshot.state == "pending":
            snapshot.state, snapshot.progress, snapshot.detail = "completed", 100, ""
        await self._store.save_snapshot(snapshot)
        self.changed()
        log.info("%s: completed (%s, %d bytes stored, parent %s)", snapshot.snapshot_id, snapshot.volume_id, stored,
                 snapshot.parent or "none")  # fmt: skip

    async def _take_chunks(self, snapshot: Snapshot, progress: Callable[[int], None]) -> tuple[list[str], int]:
        """The volume's changed chunks to Walrus: (the snapshot's chunks, bytes stored). Where the file system has
        reflinks the snapshot reads a frozen copy of the volume made now, and, given its parent's frozen copy, only
        the chunks whose blocks moved since (extents.py); elsewhere it reads the live file in full."""
        async with self.snapshot_store.lock:  # no deletion meanwhile removes a chunk this one reuses
            volume = self.volumes.get(snapshot.volume_id)
            if volume is None:
                raise FileNotFoundError(f"volume {snapshot.volume_id} is gone")
            parent = self.snapshots.get(snapshot.parent)
            if parent is not None and parent.state != "completed":
                parent = None
            reuse = set(parent.chunks) if parent is not None else set()
            frozen = files.frozen_path(self.dir, volume.volume_id, snapshot.snapshot_id)
            source, changed = self.path(volume), None
            if await asyncio.to_thread(extents.clone, source, frozen):
                source = frozen
                base = files.frozen_path(self.dir, volume.volume_id, parent.snapshot_id) if parent else None
                if parent is not None and base is not None and await asyncio.to_thread(base.exists):
                    count = (snapshot.size_gb * files.GIB + CHUNK - 1) // CHUNK
                    changed = await asyncio.to_thread(extents.changed_chunks, base, frozen, CHUNK, count)
                    if changed is not None:
                        log.info("%s: %d of %d chunks changed since %s", snapshot.snapshot_id, len(changed), count,
                                 parent.snapshot_id)  # fmt: skip
            try:
                result = await self.snapshot_store.take(
                    snapshot.snapshot_id, source, snapshot.size_gb, reuse, progress,
                    parent.chunks if parent is not None else None, changed,
                )  # fmt: skip
            except BaseException:
                await files.remove(frozen)
                raise
            for volume_id, snapshot_id, path in await files.frozen_files(self.dir):  # under the lock: no other
                if volume_id == volume.volume_id and snapshot_id != snapshot.snapshot_id:  # snapshot is being taken
                    await files.remove(path)  # the newest frozen copy is the next snapshot's base
        return result

    async def delete_snapshot(self, snapshot_id: str) -> StorageSnapshot:
        """Remove the snapshot's manifest, and its chunks that no other snapshot of the zone lists (or the RBD
        snapshot)."""
        snapshot_id = check_id(snapshot_id, "snap", "InvalidSnapshotID.Malformed")
        snapshot = self.snapshots.get(snapshot_id)
        if snapshot is None:
            return self.snapshot_info(snapshot_id)
        if snapshot.state != "deleting":
            snapshot.state = "deleting"
            await self._store.save_snapshot(snapshot)  # written before anything is removed
        job = self._jobs.get(snapshot_id)
        if job is not None and job is not asyncio.current_task():
            await asyncio.gather(job, return_exceptions=True)  # let it finish: then its chunks are known
        async with self.snapshot_store.lock:
            others: set[str] = set()
            for other in self.snapshots.values():
                if other is not snapshot:
                    others |= set(other.chunks)
            if self.rbd is not None:  # clones made from it keep it in Ceph's trash while they need it
                await self.rbd.remove_snapshot(snapshot.volume_id, snapshot_id)
            else:
                await self.snapshot_store.delete(snapshot_id, set(snapshot.chunks) - others)
            await self._store.delete_snapshot(snapshot_id)
            self.snapshots.pop(snapshot_id, None)
            for other in self.snapshots.values():  # its children now build on its own parent
                if other.parent == snapshot_id:
                    other.parent = snapshot.parent
                    await self._store.save_snapshot(other)
        if self.rbd is not None and snapshot.volume_id not in self.volumes:
            await self._remove_data(snapshot.volume_id)  # a deleted volume's image, kept for its snapshots
        log.info("%s: deleted", snapshot_id)
        return self.snapshot_info(snapshot_id)

    # --- the safety net -----------------------------------------------------------------------------------
    async def _reconcile_loop(self) -> None:
        await asyncio.sleep(0.5)  # let the cluster learn its instances first
        while True:
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("storage reconcile failed")
            await asyncio.sleep(self.config.KOALA_EBS_RECONCILE_SECONDS)

    async def reconcile(self) -> None:
        """Attachments whose instance ended are detached; half-made attachments are finished or undone; exports
        match the records (re-made after a tgtd restart, orphans removed); stray volume files are removed."""
        for volume_id, attachment in list(self.attachments.items()):
            volume = self.volumes.get(volume_id)
            if volume is None:
                continue
            async with self._lock(volume_id):
                if self.attachments.get(volume_id) is not attachment:
                    continue
                live = self.instance_live(attachment.instance_id)
                try:
                    if attachment.state == "detaching" or not live:
                        if attachment.state != "detaching":
                            attachment.state, attachment.detail = "detaching", "the instance ended"
                            await self._store.save_attachment(attachment)
                        await self._unplug(volume, attachment, force=not live)
                    elif attachment.state == "attaching":
                        await self._plug(volume, attachment)
                    else:
                        await self._export(volume, attachment)  # tgtd may have restarted
                except (RpcError, TgtError, PeerUnreachable) as err:
                    log.warning("%s: reconcile: %s", volume_id, err)
        if self.rbd is None and await self.tgt.running():
            wanted = {v.tid for vid, v in self.volumes.items() if vid in self.attachments}
            for tid, target in (await self.tgt.targets()).items():
                if target.iqn.startswith(self.iqn_prefix) and tid not in wanted:
                    log.warning("removing orphaned export %s (tid %d)", target.iqn, tid)
                    with contextlib.suppress(TgtError):
                        await self.tgt.remove(tid)
        for path in await files.stray_files(self.dir, set(self.volumes)):
            log.warning("removing stray volume file %s", path)
            await files.remove(path)
        for volume_id, snapshot_id, path in await files.frozen_files(self.dir):
            snapshot = self.snapshots.get(snapshot_id)  # frozen copies of snapshots deleted or failed meanwhile
            if volume_id not in self.volumes or snapshot is None or snapshot.state not in ("pending", "completed"):
                await files.remove(path)
        if self.rbd is not None:  # images no volume or snapshot explains (a crash between the image and the record)
            explained = set(self.volumes) | {s.volume_id for s in self.snapshots.values()}
            for volume_id in await self.rbd.volume_ids() - explained:
                if await self.rbd.remove(volume_id):
                    log.warning("removed stray RBD image of %s", volume_id)
        if self.snapshot_store.enabled and self.snapshots and not self.snapshot_store.lock.locked():
            async with self.snapshot_store.lock:
                if not any(s.state == "pending" for s in self.snapshots.values()):
                    known: set[str] = set()
                    for snapshot in self.snapshots.values():
                        known |= set(snapshot.chunks)
                    removed = await self.snapshot_store.remove_orphans(known)
                    if removed:
                        log.warning("removed %d orphaned snapshot chunks", removed)
