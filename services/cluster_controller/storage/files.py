"""Volume files: one sparse file per volume in the storage directory, named from its validated id; and the frozen
copies snapshots read (extents.py), in its `.frozen` subdirectory, named from the volume's and snapshot's ids."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from common.ids import is_id, normalize

GIB = 1 << 30


def volume_path(directory: Path, volume_id: str) -> Path:
    """The file of a volume; the id is checked, never used as given."""
    if not is_id(volume_id, "vol"):
        raise ValueError(f"not a volume id: {volume_id[:40]!r}")
    return directory / f"{normalize(volume_id)}.img"


FROZEN = ".frozen"


def frozen_path(directory: Path, volume_id: str, snapshot_id: str) -> Path:
    """The frozen copy of a volume that a snapshot reads (and the next snapshot compares with); ids checked."""
    if not is_id(volume_id, "vol") or not is_id(snapshot_id, "snap"):
        raise ValueError(f"not a volume and snapshot id: {volume_id[:40]!r} {snapshot_id[:40]!r}")
    return directory / FROZEN / f"{normalize(volume_id)}.{normalize(snapshot_id)}.img"


def _frozen_files(directory: Path) -> list[tuple[str, str, Path]]:
    found = []
    for path in (directory / FROZEN).glob("vol-*.snap-*.img"):
        volume_id, _, snapshot_id = path.name[: -len(".img")].partition(".")
        found.append((volume_id, snapshot_id, path))
    return found


async def frozen_files(directory: Path) -> list[tuple[str, str, Path]]:
    """(volume id, snapshot id, path) of every frozen copy."""
    return await asyncio.to_thread(_frozen_files, directory)


def _create_sparse(path: Path, size_gb: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:  # a fresh, empty (all-zero) volume, whatever an earlier attempt left
        file.truncate(size_gb * GIB)
        os.fsync(file.fileno())


async def create_sparse(path: Path, size_gb: int) -> None:
    await asyncio.to_thread(_create_sparse, path, size_gb)


async def remove(path: Path) -> None:
    await asyncio.to_thread(path.unlink, missing_ok=True)


def _filesystem_gb(directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    stat = os.statvfs(directory)
    return stat.f_blocks * stat.f_frsize // GIB


async def filesystem_gb(directory: Path) -> int:
    return await asyncio.to_thread(_filesystem_gb, directory)


def _stray_files(directory: Path, known: set[str]) -> list[Path]:
    if not directory.exists():
        return []
    return [p for p in directory.glob("vol-*.img") if p.stem not in known]


async def stray_files(directory: Path, known: set[str]) -> list[Path]:
    """Volume files no record explains (left by a crash between unlinking and forgetting, or the reverse)."""
    return await asyncio.to_thread(_stray_files, directory, known)
