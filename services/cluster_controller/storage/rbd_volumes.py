"""EBS volumes as Ceph RBD images (KOALA_EBS_BACKEND=rbd), through librbd (Debian's python3-rbd).

A volume is the image `<zone>.<vol-id>` in KOALA_EBS_RBD_POOL (the zone prefix keeps zones apart in one pool);
a snapshot is the RBD snapshot `<snap-id>` of its volume's image, taken at once (copy-on-write); a volume made
from a snapshot is a clone of it (clone format 2: the snapshot may be deleted while clones use it, Ceph keeps
it in its trash until they are gone). Guests reach an image with QEMU's own rbd driver: the node gets the pool,
the image and the monitors (RbdTarget) and uses its own Ceph key, so no iSCSI export and no kernel module is
involved.

A volume deleted while snapshots of it remain keeps its image (the snapshots live in it) until its last
snapshot goes; the manager's reconcile loop removes images that neither a volume nor a snapshot explains.
Names come from validated ids only. librbd calls block: each runs in a thread.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from common.ceph import CephError, CephSettings, connect, open_pool
from common.ids import is_id, normalize
from common.messages.storage import RbdTarget

GIB = 1 << 30
_MON = re.compile(r"(?:v[12]:)?([0-9A-Za-z.-]+|\[[0-9a-fA-F:]+\]):(\d{1,5})")


def _rbd() -> Any:
    try:
        import rbd  # Debian's python3-rbd; bootstrap makes the venv see it
    except ImportError as err:
        raise CephError("librbd's Python binding is missing (install python3-rbd; see deploy/bootstrap.sh)") from err
    return rbd


def monitors(mon_host: str) -> list[str]:
    """HOST:PORT of each monitor in a ceph.conf `mon host` value ("[v2:a:3300,v1:a:6789] ..."), one per host."""
    found: dict[str, str] = {}
    for host, port in _MON.findall(mon_host):
        found.setdefault(host, f"{host}:{port}")  # the first address of each monitor (msgr2 when offered)
    return list(found.values())


class RbdVolumes:
    def __init__(self, settings: CephSettings, pool: str, zone: str):
        self.settings, self.pool = settings, pool
        self.prefix = f"{re.sub(r'[^a-z0-9-]', '-', zone.lower())}."
        self.cluster: Any = None
        self._ioctx: Any = None
        self.monitors: list[str] = []

    # --- life ---
    async def start(self) -> None:
        self.cluster = await connect(self.settings)
        try:
            # format 2 clones: a snapshot can be deleted while volumes made from it live on
            await asyncio.to_thread(self.cluster.conf_set, "rbd_default_clone_format", "2")
            self._ioctx = await open_pool(self.cluster, self.pool)
            self.monitors = monitors(await asyncio.to_thread(self.cluster.conf_get, "mon_host"))
        except BaseException:
            await self.close()
            raise
        if not self.monitors:
            await self.close()
            raise CephError("no monitor address in the Ceph configuration (mon host)")

    async def close(self) -> None:
        ioctx, cluster, self._ioctx, self.cluster = self._ioctx, self.cluster, None, None

        def shut() -> None:
            if ioctx is not None:
                ioctx.close()
            if cluster is not None:
                cluster.shutdown()

        await asyncio.to_thread(shut)

    @property
    def ioctx(self) -> Any:
        if self._ioctx is None:
            raise CephError("the RBD pool is not open")
        return self._ioctx

    # --- names ---
    def image(self, volume_id: str) -> str:
        if not is_id(volume_id, "vol"):
            raise ValueError(f"not a volume id: {volume_id[:40]!r}")
        return f"{self.prefix}{normalize(volume_id)}"

    @staticmethod
    def snap(snapshot_id: str) -> str:
        if not is_id(snapshot_id, "snap"):
            raise ValueError(f"not a snapshot id: {snapshot_id[:40]!r}")
        return normalize(snapshot_id)

    def target(self, volume_id: str) -> RbdTarget:
        return RbdTarget(pool=self.pool, image=self.image(volume_id), monitors=self.monitors)

    # --- capacity ---
    async def capacity_gb(self) -> int:
        stats = await asyncio.to_thread(self.cluster.get_cluster_stats)
        return int(stats["kb"]) // (1 << 20)

    # --- volumes ---
    async def create(self, volume_id: str, size_gb: int) -> None:
        """A fresh, empty image, whatever an earlier attempt left under its name."""
        rbd, ioctx, name = _rbd(), self.ioctx, self.image(volume_id)

        def create() -> None:
            try:
                rbd.RBD().remove(ioctx, name)
            except rbd.ImageNotFound:
                pass
            rbd.RBD().create(ioctx, name, size_gb * GIB)

        await asyncio.to_thread(create)

    async def clone(self, volume_id: str, size_gb: int, source_volume_id: str, snapshot_id: str) -> None:
        """The volume as a copy-on-write clone of a snapshot, grown to `size_gb`."""
        rbd, ioctx = _rbd(), self.ioctx
        name, parent, snap = self.image(volume_id), self.image(source_volume_id), self.snap(snapshot_id)

        def clone() -> None:
            try:
                rbd.RBD().remove(ioctx, name)
            except rbd.ImageNotFound:
                pass
            rbd.RBD().clone(ioctx, parent, snap, ioctx, name)
            with rbd.Image(ioctx, name) as image:
                if image.size() < size_gb * GIB:
                    image.resize(size_gb * GIB)

        await asyncio.to_thread(clone)

    async def remove(self, volume_id: str) -> bool:
        """Remove a volume's image; False while snapshots (its own, or trashed ones clones use) keep it."""
        rbd, ioctx, name = _rbd(), self.ioctx, self.image(volume_id)

        def remove() -> bool:
            try:
                rbd.RBD().remove(ioctx, name)
            except rbd.ImageNotFound:
                return True
            except (rbd.ImageHasSnapshots, rbd.ImageBusy):
                return False
            return True

        return await asyncio.to_thread(remove)

    async def volume_ids(self) -> set[str]:
        """The volume ids of this zone's images in the pool."""
        rbd, ioctx = _rbd(), self.ioctx
        names = await asyncio.to_thread(rbd.RBD().list, ioctx)
        return {
            n[len(self.prefix) :] for n in names if n.startswith(self.prefix) and is_id(n[len(self.prefix) :], "vol")
        }

    # --- snapshots ---
    async def snapshot(self, volume_id: str, snapshot_id: str, parent_id: str = "") -> int:
        """Take the snapshot (idempotent); the bytes written since `parent_id` (or allocated, without one)."""
        rbd, ioctx = _rbd(), self.ioctx
        name, snap = self.image(volume_id), self.snap(snapshot_id)
        parent = self.snap(parent_id) if parent_id else None

        def take() -> int:
            with rbd.Image(ioctx, name) as image:
                if not any(s["name"] == snap for s in image.list_snaps()):
                    image.create_snap(snap)
            changed = 0

            def count(offset: int, length: int, exists: bool) -> None:
                nonlocal changed
                if exists:
                    changed += length

            with rbd.Image(ioctx, name, snapshot=snap, read_only=True) as image:
                if parent is not None and not any(s["name"] == parent for s in image.list_snaps()):
                    parent_snap = None
                else:
                    parent_snap = parent
                image.diff_iterate(0, image.size(), parent_snap, count, whole_object=True)
            return changed

        return await asyncio.to_thread(take)

    async def remove_snapshot(self, volume_id: str, snapshot_id: str) -> None:
        """Remove the snapshot (gone already is fine); clones made from it keep reading it from Ceph's trash."""
        rbd, ioctx = _rbd(), self.ioctx
        name, snap = self.image(volume_id), self.snap(snapshot_id)

        def remove() -> None:
            try:
                with rbd.Image(ioctx, name) as image:
                    if any(s["name"] == snap for s in image.list_snaps()):
                        image.remove_snap(snap)
            except rbd.ImageNotFound:
                pass

        await asyncio.to_thread(remove)
