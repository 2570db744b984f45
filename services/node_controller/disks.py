"""Instance disks: root from the cached image, ephemeral and swap as Eucalyptus made them.

Root disk: a qcow2 overlay whose backing file is the cached image (kvm, qemu, test), or a sparse copy (xen).
Why the overlay: it is made in milliseconds whatever the image size, so a cached launch costs no copy (the
RunInstance -> running budget is 300 ms), many instances of one image share its blocks, and its virtual size
is simply set to the VM type's disk. Its cost is that the cached file must outlive the instance: the cache
pins it. Xen's blkback wants raw files, so there the root is a sparse copy (cp --sparse=always), grown by
truncation. Either way the guest sees a root disk as large as its VM type's disk.

Ephemeral: disk - image - swap (the reference's rule), ext3: with overlays, a qcow2 on an ext3 template
formatted once per size (INSTANCE_PATH/.templates), else formatted in place; swap: SWAP_SIZE MB, mkswap. All
sparse. All external tools run through `common.hostcmd`; `CONCURRENT_DISK_OPS` bounds the work.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from common.hostcmd import CommandFailed, SubprocessRunner
from services.node_controller.domain import DiskSpec

GIB = 1 << 30
MIB = 1 << 20
MIN_EPHEMERAL = 64 * MIB


class DiskError(Exception):
    """Building a disk failed; the message says which tool and why (e.g. No space left on device)."""


# Disk tools get a generous deadline (a sparse copy of a large image for Xen), but never an unbounded one.
_RUNNER = SubprocessRunner(timeout=1800.0)


async def run(*argv: str) -> None:
    try:
        await _RUNNER.run(argv)
    except CommandFailed as err:
        said = (err.stderr or "").strip().splitlines()
        raise DiskError(f"{argv[0]} failed: {said[-1] if said else f'exit status {err.code}'}") from None


async def _sparse_file(path: Path, size: int) -> None:
    def make() -> None:
        with path.open("wb") as handle:
            handle.truncate(size)

    try:
        await asyncio.get_running_loop().run_in_executor(None, make)
    except OSError as err:
        raise DiskError(f"cannot create {path.name}: {err.strerror}") from None


async def make_root(image: Path, image_size: int, dest_dir: Path, disk_gb: int, mode: str) -> DiskSpec:
    size = max(disk_gb * GIB, image_size)
    if mode == "overlay":
        dest = dest_dir / "root.qcow2"
        await run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image), str(dest), str(size))
        return DiskSpec(dest, "root", "qcow2")
    dest = dest_dir / "root.img"
    await run("cp", "--sparse=always", "--reflink=auto", str(image), str(dest))
    try:
        await asyncio.get_running_loop().run_in_executor(None, os.truncate, dest, size)
    except OSError as err:
        raise DiskError(f"cannot grow the root disk: {err.strerror}") from None
    return DiskSpec(dest, "root", "raw")


_template_locks: dict[Path, asyncio.Lock] = {}


def _mkdirs(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


async def ephemeral_template(templates: Path, size: int) -> Path:
    """An ext3 file system of `size` bytes, formatted once per size and shared read-only by overlays."""
    path = templates / f"ephemeral-ext3-{size // MIB}M.img"
    lock = _template_locks.setdefault(path, asyncio.Lock())
    async with lock:
        if not path.exists():
            await asyncio.get_running_loop().run_in_executor(None, _mkdirs, templates)
            tmp = path.with_name(path.name + ".tmp")
            await _sparse_file(tmp, size)
            await run("mke2fs", "-q", "-F", "-t", "ext3", "-L", "ephemeral0",
                      "-E", "lazy_itable_init=1,lazy_journal_init=1", str(tmp))  # fmt: skip
            tmp.replace(path)
    return path


async def make_ephemeral(dest_dir: Path, size: int, mode: str = "copy", templates: Path | None = None):
    """The ephemeral disk, ext3. With overlays: a qcow2 on a per-size template formatted once (mkfs costs ~40
    ms of CPU per instance otherwise, the largest part of staging); else a sparse file formatted in place."""
    if size < MIN_EPHEMERAL:
        return None
    if mode == "overlay" and templates is not None:
        template = await ephemeral_template(templates, size)
        dest = dest_dir / "ephemeral.qcow2"
        await run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(template), str(dest))
        return DiskSpec(dest, "ephemeral", "qcow2")
    dest = dest_dir / "ephemeral.img"
    await _sparse_file(dest, size)
    await run("mke2fs", "-q", "-F", "-t", "ext3", "-L", "ephemeral0", "-E", "lazy_itable_init=1,lazy_journal_init=1",
              str(dest))  # fmt: skip
    return DiskSpec(dest, "ephemeral")


async def make_swap(dest_dir: Path, size_mb: int) -> DiskSpec | None:
    if size_mb <= 0:
        return None
    dest = dest_dir / "swap.img"
    await _sparse_file(dest, size_mb * MIB)
    await run("mkswap", "-L", "swap", str(dest))
    return DiskSpec(dest, "swap")


async def make_disks(
    image: Path, dest_dir: Path, disk_gb: int, swap_mb: int, mode: str, templates: Path | None = None
) -> list[DiskSpec]:
    """Root, then ephemeral and swap (so the guest sees them in Eucalyptus's order), built concurrently."""
    loop = asyncio.get_running_loop()
    image_size = (await loop.run_in_executor(None, image.stat)).st_size
    ephemeral_size = (disk_gb * GIB - image_size - swap_mb * MIB) // MIB * MIB
    try:
        async with asyncio.TaskGroup() as group:  # one failure cancels the others
            root = group.create_task(make_root(image, image_size, dest_dir, disk_gb, mode))
            ephemeral = group.create_task(make_ephemeral(dest_dir, ephemeral_size, mode, templates))
            swap = group.create_task(make_swap(dest_dir, swap_mb))
    except* (DiskError, OSError) as group_error:
        first = group_error.exceptions[0]
        message = str(first) if isinstance(first, DiskError) else f"{getattr(first, 'strerror', None) or first}"
        stat = await loop.run_in_executor(None, os.statvfs, dest_dir)
        if stat.f_bavail * stat.f_frsize < 64 * MIB and "No space left" not in message:
            message += " (No space left on device)"
        raise DiskError(message) from None
    return [disk for disk in (root.result(), ephemeral.result(), swap.result()) if disk is not None]
