"""Volumes and snapshots of every account, each zone's block storage (free / capacity), and the administrator's
actions: force-detach a volume, delete a volume or a snapshot. The checks are the EBS engine's own (acting as the
owner: a volume in use cannot be deleted, a snapshot an image uses cannot be)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from services.cloud_controller.admin.app import Admin, Failure, Page
from services.cloud_controller.ebs.engine import Ebs
from services.cloud_controller.ebs.store import Volume

BACK = "/admin/volumes"


@dataclass(frozen=True)
class Owner:
    """The resource's owner, as whom the administrator acts."""

    account_id: str
    user_id: str = ""
    is_admin: bool = True


async def show(page: Page) -> web.StreamResponse:
    engine = page.service.ebs
    zones = sorted(page.service.compute.cc.clusters)
    storage = [(zone, engine.zone_capacity(zone), engine.zone_allocated(zone)) for zone in zones]
    volumes = sorted(engine.store.volumes.values(), key=lambda v: (v.owner_id, v.volume_id))
    snapshots = sorted(engine.store.snapshots.values(), key=lambda s: (s.owner_id, s.snapshot_id))
    return page.render("volumes.html", storage=storage, volumes=volumes, snapshots=snapshots)


def _volume(page: Page) -> tuple[Ebs, Volume]:
    engine = page.service.ebs
    volume = engine.store.volumes.get(page.field("volume_id", 20).lower())
    if volume is None:
        raise Failure("No such volume.", 404)
    return engine, volume


async def detach(page: Page) -> web.StreamResponse:
    engine, volume = _volume(page)
    await engine.detach(Owner(volume.owner_id), volume.volume_id, force=True)
    page.flash("ok", f"Volume {volume.volume_id} is being detached from {volume.instance_id or 'its instance'}.")
    return page.redirect(BACK)


async def delete(page: Page) -> web.StreamResponse:
    engine, volume = _volume(page)
    await engine.delete_volume(Owner(volume.owner_id), volume.volume_id)
    page.flash("ok", f"Volume {volume.volume_id} is being deleted.")
    return page.redirect(BACK)


async def delete_snapshot(page: Page) -> web.StreamResponse:
    engine = page.service.ebs
    snapshot = engine.store.snapshots.get(page.field("snapshot_id", 20).lower())
    if snapshot is None:
        raise Failure("No such snapshot.", 404)
    await engine.delete_snapshot(Owner(snapshot.owner_id), snapshot.snapshot_id)
    page.flash("ok", f"Snapshot {snapshot.snapshot_id} is being deleted.")
    return page.redirect(BACK)


def register(admin: Admin) -> None:
    admin.get(BACK, show)
    admin.post(BACK + "/detach", detach, back=BACK)
    admin.post(BACK + "/delete", delete, back=BACK)
    admin.post(BACK + "/delete-snapshot", delete_snapshot, back=BACK)
