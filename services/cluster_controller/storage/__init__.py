"""The zone's Elastic Block Store: the storage role of Eucalyptus's Storage Controller, inside the CC.

Where it runs
-------------
On the CC's host, as the seed's design had it ("1 CC + EBS controller + nodes = an availability zone"). Volumes
are sparse files in KOALA_EBS_DIR (default `<CC state>/volumes`, named from their validated ids); one tgtd (Debian's
userspace iSCSI target) on KOALA_EBS_PORTAL exports them; the CC drives it with tgtadm through the same command
runner as its network (`common/hostcmd.py`). Storage hosts driven over SSH were considered and left out: they add
a second copy of every state machine (the host's and the CC's) and a failure mode (the SSH link) for no gain on
one machine, and the nodes already reach the CC's host. The pieces that would move to such a host are `tgt.py`
and `files.py`, both behind the runner, so a runner that prefixes `ssh HOST` is the way there.

The data path
-------------
A volume is exported only while it is attached: target `iqn.2010-01.org.koala:<zone>.<vol-id>` (tid from the
volume record), LUN 1 backed by the file, and an ACL naming one initiator, `...:node.<instance>.<random>`, made
for that attachment and told only to the node that runs the instance. The NC plugs the volume into the domain as
a libvirt network disk (protocol iscsi) with that initiator name, so QEMU's own iSCSI initiator opens it (the
kernels here have no host initiator); another node, or another attachment, cannot log in. The guest sees a virtio
disk appear (and go on detach) with the volume id as its serial.

On Ceph (KOALA_EBS_BACKEND=rbd, `rbd_volumes.py`), a volume is the RBD image `<zone>.<vol-id>` of
KOALA_EBS_RBD_POOL instead: nothing is exported, the node gets the pool, image and monitors and its QEMU opens the
image with the node's own Ceph key (services/node_controller/rbd_disks.py); snapshots are RBD snapshots and a volume
made from one is a copy-on-write clone.

Volumes an instance boots with (EBS-backed instances: the root and launch mappings) are not hot-plugged: the CLC
names them in RunInstances (LaunchSpec.boot_volumes), and before the node hears of the instance the CC records each
attachment `attached` to the chosen node and exports it (`StorageManager.boot_attach`); the node gets the targets in
RunInstanceRequest.volumes and creates the domain with them (the root as its first disk). When the run ends (stop,
terminate, failure) the reconcile loop removes the exports, as for any attachment of an instance that is over; the
next start exports them again, perhaps to another node. In an RBD zone nothing is exported: the node gets each
image's place (BootVolume.rbd) and its QEMU opens the root and the others with the node's own Ceph key.

Live migration (services/cluster_controller/migration.py) takes the instance's attachments along, never the data:
before the target prepares, each attachment records the target node and a second initiator name made for it
(`move_node_url`, `move_initiator`), and only then does the export admit that name beside the current one; the
target logs in once to check, and the guest's disk on the target opens the volume with it. When the migration
settles the record follows the guest (its node and initiator become the target's; the source's name is no longer
admitted) or stays (the target's name is no longer admitted); attach and detach of the instance wait meanwhile.

Snapshots (`snapshots.py`) go to Walrus through its S3 API: compressed 4 MiB chunks named by their digest, a
manifest per snapshot; a volume's next snapshot uploads only the chunks that changed. With KOALA_EBS_DIR on a file
system with reflinks (XFS made with reflink=1, btrfs), a snapshot reads a frozen copy of the volume made when it
starts (one moment, whatever the guest writes meanwhile), and the next one reads only the chunks whose extents moved
since that copy (`extents.py`); elsewhere each snapshot reads the whole live file.

State machines and crashes
--------------------------
Every state is written to `storage.db` before it is acted on (`manager.py`): a volume is recorded `creating`
before its file is made and `deleting` before it goes; an attachment `attaching` before anything is exported and
`detaching` before the node hears of it; a snapshot `pending` before a block is read. After a kill -9 the CC
finishes what it finds half done (creations, deletions, snapshots run again; attachments are plugged or unplugged
again, every step idempotent) and its reconcile loop keeps the exports equal to the records: a target tgtd lost
(tgtd restarted) is made again, a target no record explains is removed, a volume file no record explains is
removed, chunks no snapshot lists are removed. tgtd runs detached from the CC, so guests keep their disks while
the CC restarts.

The CLC calls (role clc): CreateVolume, DeleteVolume, DescribeStorage, AttachVolume, DetachVolume,
CreateSnapshot, DeleteSnapshot (common/messages/storage.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from aiohttp import web
from pydantic import BaseModel

from common.messages import storage as msg
from common.rpc import Caller, Empty, RpcError
from services.cluster_controller.nc_client import NcClient
from services.cluster_controller.storage.manager import StorageManager
from services.cluster_controller.storage.settings import StorageSettings

if TYPE_CHECKING:
    from services.cluster_controller.service import ClusterControllerService

__all__ = ["StorageManager", "StorageSettings", "install"]
CLC = frozenset({"clc"})
Req = TypeVar("Req", bound=BaseModel)
Resp = TypeVar("Resp", bound=BaseModel)
CLC_OR_ADMIN = frozenset({"clc", "admin"})


def install(service: ClusterControllerService) -> StorageManager:
    """Give the CC service `service.storage` and register the storage operations; started with the app."""
    config = service.config
    nodes = NcClient(service.client, config.KOALA_NC_TIMEOUT, config.KOALA_RUN_TIMEOUT)
    manager = StorageManager(config, config.KOALA_STATE_DIR, config.KOALA_ZONE, nodes, None)

    async def storage_changed() -> None:  # CC -> CLC: reconcile now (its polls are the safety net)
        if config.KOALA_CLC_URL:
            message = msg.StorageChanged(zone=config.KOALA_ZONE)
            await service.client.call(config.KOALA_CLC_URL, "StorageChanged", message, Empty, timeout=5.0,
                                      expect_role="clc")  # fmt: skip

    manager.notify = storage_changed
    service.storage = manager

    async def create(request: msg.CreateVolumeRequest, caller: Caller) -> msg.StorageVolume:
        return await manager.create(request)

    async def delete(request: msg.VolumeIdRequest, caller: Caller) -> msg.StorageVolume:
        return await manager.delete(request.volume_id)

    async def describe(request: msg.DescribeStorageRequest, caller: Caller) -> msg.DescribeStorageResponse:
        return manager.describe(request.volume_ids, request.snapshot_ids)

    async def attach(request: msg.AttachVolumeRequest, caller: Caller) -> msg.StorageVolume:
        return await manager.attach(request)

    async def detach(request: msg.DetachVolumeRequest, caller: Caller) -> msg.StorageVolume:
        return await manager.detach(request)

    async def snapshot(request: msg.CreateSnapshotRequest, caller: Caller) -> msg.StorageSnapshot:
        return await manager.create_snapshot(request)

    async def delete_snapshot(request: msg.SnapshotIdRequest, caller: Caller) -> msg.StorageSnapshot:
        return await manager.delete_snapshot(request.snapshot_id)

    def ready(handler: Callable[[Req, Caller], Awaitable[Resp]]) -> Callable[[Req, Caller], Awaitable[Resp]]:
        async def guarded(request: Req, caller: Caller) -> Resp:
            if manager.store is None:
                raise RpcError(503, "NotReady", "the storage is starting")
            return await handler(request, caller)

        return guarded

    add = service.rpc.add
    add("CreateVolume", ready(create), CLC, msg.CreateVolumeRequest)
    add("DeleteVolume", ready(delete), CLC, msg.VolumeIdRequest)
    add("DescribeStorage", ready(describe), CLC_OR_ADMIN, msg.DescribeStorageRequest)
    add("AttachVolume", ready(attach), CLC, msg.AttachVolumeRequest)
    add("DetachVolume", ready(detach), CLC, msg.DetachVolumeRequest)
    add("CreateSnapshot", ready(snapshot), CLC, msg.CreateSnapshotRequest)
    add("DeleteSnapshot", ready(delete_snapshot), CLC, msg.SnapshotIdRequest)

    async def on_startup(_: web.Application) -> None:
        await manager.start()

    async def on_cleanup(_: web.Application) -> None:
        await manager.stop()

    service.app.on_startup.append(on_startup)
    service.app.on_cleanup.append(on_cleanup)
    return manager
