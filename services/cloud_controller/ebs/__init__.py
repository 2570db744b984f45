"""Elastic Block Store in the CLC: volumes, attachments and snapshots as users see them (see engine.py).

`install(clc)` creates the engine (`clc.ebs`), loads it, makes volumes and snapshots taggable, listens to instance
state (volumes of terminated instances are detached) and starts the reconcile loop.
"""

from __future__ import annotations

from typing import Any

from services.cloud_controller.ebs.engine import Ebs, EbsSettings


async def install(clc: Any) -> Ebs:
    from services.cloud_controller.actions import tags

    config = clc.config
    settings = EbsSettings(
        quota_volume_gb=config.KOALA_QUOTA_VOLUME_GB,
        quota_volumes=config.KOALA_QUOTA_VOLUMES,
        quota_snapshots=config.KOALA_QUOTA_SNAPSHOTS,
        poll_interval=config.KOALA_EBS_POLL_SECONDS,
    )
    ebs = Ebs(clc.db, clc.compute, clc.client, settings)
    await ebs.load()

    async def owned_volumes(db: Any, owner_id: str, ids: list[str]) -> set[str]:
        return {i for i in ids if (v := ebs.store.volumes.get(i.lower())) is not None and v.owner_id == owner_id}

    async def owned_snapshots(db: Any, owner_id: str, ids: list[str]) -> set[str]:
        return {i for i in ids if (s := ebs.store.snapshots.get(i.lower())) is not None and s.owner_id == owner_id}

    tags.register("vol", "volume", owned_volumes, "InvalidVolume.NotFound")
    tags.register("snap", "snapshot", owned_snapshots, "InvalidSnapshot.NotFound")

    async def forget_tags(resource_ids: list[str]) -> None:
        await tags.forget(clc.db, resource_ids)

    ebs.on_forget.append(forget_tags)
    clc.compute.on_change.append(ebs.instances_changed)
    ebs.start()
    return ebs


__all__ = ["Ebs", "EbsSettings", "install"]
