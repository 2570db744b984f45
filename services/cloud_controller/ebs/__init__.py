"""Elastic Block Store in the CLC: volumes, attachments and snapshots as users see them (see engine.py).

`install(clc)` creates the engine (`clc.ebs`), loads it, makes volumes and snapshots taggable, listens to instance
state (volumes of terminated instances are detached) and starts the reconcile loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from common.messages import storage as msg
from common.rpc import Caller, Empty
from services.cloud_controller.ebs.engine import Ebs, EbsSettings
from services.cloud_controller.ebs.roots import Roots

if TYPE_CHECKING:
    from services.cloud_controller.service import CloudControllerService


async def install(clc: CloudControllerService) -> Ebs:
    config = clc.config
    settings = EbsSettings(
        quota_volume_gb=config.KOALA_QUOTA_VOLUME_GB,
        quota_volumes=config.KOALA_QUOTA_VOLUMES,
        quota_snapshots=config.KOALA_QUOTA_SNAPSHOTS,
        poll_interval=config.KOALA_EBS_POLL_SECONDS,
    )
    ebs = Ebs(clc.db, clc.compute, settings)
    await ebs.load()
    ebs.roots = clc.compute.roots = Roots(ebs)  # EBS-backed images and instances
    clc.compute.metadata_extras.append(ebs.roots.metadata)  # block-device-mapping/ebsN

    async def owned_volumes(owner_id: str, ids: list[str]) -> set[str]:
        return {i for i in ids if (v := ebs.store.volumes.get(i.lower())) is not None and v.owner_id == owner_id}

    async def owned_snapshots(owner_id: str, ids: list[str]) -> set[str]:
        return {i for i in ids if (s := ebs.store.snapshots.get(i.lower())) is not None and s.owner_id == owner_id}

    tags = clc.compute.tags
    tags.register("vol", "volume", owned_volumes, "InvalidVolume.NotFound")
    tags.register("snap", "snapshot", owned_snapshots, "InvalidSnapshot.NotFound")
    ebs.on_forget.append(tags.forget)
    clc.compute.on_change.append(ebs.instances_changed)

    async def list_volumes(_: Empty, caller: Caller) -> msg.ListVolumesResponse:
        store = ebs.store
        return msg.ListVolumesResponse(
            zones=[
                msg.ZoneStorage(zone=zone, capacity_gb=ebs.zone_capacity(zone).capacity_gb,
                                allocated_gb=ebs.zone_allocated(zone))
                for zone in sorted(clc.compute.cc.clusters)
            ],
            volumes=[
                msg.AdminVolume(
                    volume_id=v.volume_id, owner_id=v.owner_id, zone=v.zone, size_gb=v.size_gb, state=v.state,
                    snapshot_id=v.snapshot_id, instance_id=v.instance_id, device=v.device, attach_state=v.attach_state,
                )
                for v in sorted(store.volumes.values(), key=lambda v: v.volume_id)
            ],
            snapshots=[
                msg.AdminSnapshot(
                    snapshot_id=s.snapshot_id, owner_id=s.owner_id, volume_id=s.volume_id, volume_size=s.volume_size,
                    state=s.state, progress=s.progress, public=s.public, shared_with=sorted(s.permissions),
                )
                for s in sorted(store.snapshots.values(), key=lambda s: s.snapshot_id)
            ],
        )  # fmt: skip

    clc.rpc.add("ListVolumes", list_volumes, {"admin"}, Empty)

    async def storage_changed(message: msg.StorageChanged, caller: Caller) -> Empty:
        ebs.wake()  # the reconcile asks the zones what is; the push itself is trusted for nothing more
        return Empty()

    clc.rpc.add("StorageChanged", storage_changed, {"cc"}, msg.StorageChanged)
    ebs.start()
    return ebs


__all__ = ["Ebs", "EbsSettings", "install"]
