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

Stamps: a fresh qcow2 overlay holds nothing of its own (no id: two `qemu-img create` of the same backing file
and size are byte for byte the same), and a fresh swap area differs from another only by its UUID. So the tools
run once per (backing file, size) and per swap size, their output's few non-zero blocks are kept in memory, and
each instance's file is written from them (a new UUID stamped into its swap): a launch spawns no process, which
was most of the NC's CPU per instance (qemu-img twice and mkswap).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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


StampKey = tuple[object, ...]  # what the stamp depends on: its kind, backing file, size
MakeWithTool = Callable[[Path], Awaitable[None]]  # runs the real tool once, in a scratch directory


@dataclass(frozen=True)
class Stamp:
    """A small file made by a real tool: its length and its non-zero 4 KiB blocks (offset, data)."""

    size: int
    blocks: tuple[tuple[int, bytes], ...]

    def write(self, dest: Path, patch: tuple[int, bytes] | None = None) -> None:
        """Write a sparse copy at `dest` (in a worker thread), with `patch` (offset, bytes) laid over it."""
        blocks = list(self.blocks)
        if patch is not None:
            offset, data = patch
            for index, (start, block) in enumerate(blocks):
                if start <= offset and offset + len(data) <= start + len(block):
                    at = offset - start
                    blocks[index] = (start, block[:at] + data + block[at + len(data) :])
                    break
            else:
                blocks.append(patch)
        with dest.open("wb") as handle:  # "wb": staging again after a crash rewrites what was there
            handle.truncate(self.size)
            for offset, data in blocks:
                os.pwrite(handle.fileno(), data, offset)


MAX_STAMP_DATA = 16 * MIB  # a stamp is a few blocks of metadata; anything larger is not one
_BLOCK = 4096


def capture(path: Path) -> Stamp:
    """Read `path`'s data extents (SEEK_DATA/SEEK_HOLE: a sparse file's holes are skipped) into a Stamp."""
    blocks: list[tuple[int, bytes]] = []
    total = 0
    with path.open("rb") as handle:
        fd, size = handle.fileno(), os.fstat(handle.fileno()).st_size
        offset = 0
        while offset < size:
            try:
                offset = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after offset
                break
            end = os.lseek(fd, offset, os.SEEK_HOLE)
            while offset < end:
                data = os.pread(fd, min(_BLOCK, end - offset), offset)
                if not data:
                    break
                if data.count(0) != len(data):
                    total += len(data)
                    if total > MAX_STAMP_DATA:
                        raise DiskError(f"{path.name}: {total} bytes of data is too large for a stamp")
                    if blocks and blocks[-1][0] + len(blocks[-1][1]) == offset:  # extend the previous run
                        blocks[-1] = (blocks[-1][0], blocks[-1][1] + data)
                    else:
                        blocks.append((offset, data))
                offset += len(data)
    return Stamp(size, tuple(blocks))


class Stamps:
    """Stamps by key, each made once (concurrent askers share one run of the tool), least recently used dropped."""

    def __init__(self, limit: int = 256):
        self.limit = limit
        self._stamps: OrderedDict[StampKey, Stamp] = OrderedDict()
        self._locks: dict[StampKey, asyncio.Lock] = {}
        self.made = 0  # how many times a tool ran (for tests)

    async def get(self, key: StampKey, workdir: Path, make_with_tool: MakeWithTool) -> Stamp:
        stamp = self._stamps.get(key)
        if stamp is None:
            lock = self._locks.setdefault(key, asyncio.Lock())
            async with lock:
                stamp = self._stamps.get(key)
                if stamp is None:
                    stamp = await self._make(workdir, make_with_tool)
                    self._stamps[key] = stamp
                    while len(self._stamps) > self.limit:
                        self._stamps.popitem(last=False)
            self._locks.pop(key, None)
        self._stamps.move_to_end(key)
        return stamp

    async def _make(self, workdir: Path, make_with_tool: MakeWithTool) -> Stamp:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _mkdirs, workdir)
        scratch = workdir / f"stamp-{secrets.token_hex(8)}"
        try:
            await make_with_tool(scratch)
            self.made += 1
            return await loop.run_in_executor(None, capture, scratch)
        finally:
            await loop.run_in_executor(None, lambda: scratch.unlink(missing_ok=True))


STAMPS = Stamps()
SWAP_UUID_OFFSET = 1036  # Linux swap header v1: 1024 boot bytes, version, last_page, nr_badpages, then the UUID


def _mkdirs(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


async def _overlay_stamp(backing: Path, size: int | None, workdir: Path) -> Stamp:
    async def tool(scratch: Path) -> None:
        argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(backing), str(scratch)]
        await run(*argv, *([str(size)] if size is not None else []))

    return await STAMPS.get(("qcow2", str(backing), size), workdir, tool)


async def _swap_stamp(size: int, workdir: Path) -> Stamp:
    async def tool(scratch: Path) -> None:
        await _sparse_file(scratch, size)
        await run("mkswap", "-L", "swap", str(scratch))

    return await STAMPS.get(("swap", size), workdir, tool)


async def _write(stamp: Stamp, dest: Path, patch: tuple[int, bytes] | None = None) -> None:
    try:
        await asyncio.get_running_loop().run_in_executor(None, stamp.write, dest, patch)
    except OSError as err:
        raise DiskError(f"cannot write {dest.name}: {err.strerror}") from None


async def make_root(
    image: Path, image_size: int, dest_dir: Path, disk_gb: int, mode: str, templates: Path | None = None
) -> DiskSpec:
    size = max(disk_gb * GIB, image_size)
    if mode == "overlay":
        dest = dest_dir / "root.qcow2"
        if templates is None:
            await run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image), str(dest), str(size))
        else:
            await _write(await _overlay_stamp(image, size, templates), dest)
        return DiskSpec(dest, "root", "qcow2")
    dest = dest_dir / "root.img"
    await run("cp", "--sparse=always", "--reflink=auto", str(image), str(dest))
    try:
        await asyncio.get_running_loop().run_in_executor(None, os.truncate, dest, size)
    except OSError as err:
        raise DiskError(f"cannot grow the root disk: {err.strerror}") from None
    return DiskSpec(dest, "root", "raw")


_template_locks: dict[Path, asyncio.Lock] = {}
_templates_made: set[Path] = set()  # templates are never removed while the NC runs


async def ephemeral_template(templates: Path, size: int) -> Path:
    """An ext3 file system of `size` bytes, formatted once per size and shared read-only by overlays."""
    path = templates / f"ephemeral-ext3-{size // MIB}M.img"
    if path in _templates_made:
        return path
    lock = _template_locks.setdefault(path, asyncio.Lock())
    async with lock:
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, path.exists):
            await loop.run_in_executor(None, _mkdirs, templates)
            tmp = path.with_name(path.name + ".tmp")
            await _sparse_file(tmp, size)
            await run("mke2fs", "-q", "-F", "-t", "ext3", "-L", "ephemeral0",
                      "-E", "lazy_itable_init=1,lazy_journal_init=1", str(tmp))  # fmt: skip
            tmp.replace(path)
        _templates_made.add(path)
    return path


async def make_ephemeral(
    dest_dir: Path, size: int, mode: str = "copy", templates: Path | None = None
) -> DiskSpec | None:
    """The ephemeral disk, ext3. With overlays: a qcow2 on a per-size template formatted once (mkfs costs ~40
    ms of CPU per instance otherwise, the largest part of staging); else a sparse file formatted in place."""
    if size < MIN_EPHEMERAL:
        return None
    if mode == "overlay" and templates is not None:
        template = await ephemeral_template(templates, size)
        dest = dest_dir / "ephemeral.qcow2"
        await _write(await _overlay_stamp(template, None, templates), dest)
        return DiskSpec(dest, "ephemeral", "qcow2")
    dest = dest_dir / "ephemeral.img"
    await _sparse_file(dest, size)
    await run("mke2fs", "-q", "-F", "-t", "ext3", "-L", "ephemeral0", "-E", "lazy_itable_init=1,lazy_journal_init=1",
              str(dest))  # fmt: skip
    return DiskSpec(dest, "ephemeral")


async def make_swap(dest_dir: Path, size_mb: int, templates: Path | None = None) -> DiskSpec | None:
    if size_mb <= 0:
        return None
    dest = dest_dir / "swap.img"
    if templates is None:
        await _sparse_file(dest, size_mb * MIB)
        await run("mkswap", "-L", "swap", str(dest))
    else:  # mkswap's header with this swap area's own UUID
        await _write(await _swap_stamp(size_mb * MIB, templates), dest, (SWAP_UUID_OFFSET, uuid.uuid4().bytes))
    return DiskSpec(dest, "swap")


async def make_disks(
    image: Path, dest_dir: Path, disk_gb: int, swap_mb: int, mode: str, templates: Path | None = None
) -> list[DiskSpec]:
    """Root, then ephemeral and swap (so the guest sees them in Eucalyptus's order), built concurrently.
    With `templates` (INSTANCE_PATH/.templates), tools run once per shape and instances get stamped copies."""
    loop = asyncio.get_running_loop()
    image_size = (await loop.run_in_executor(None, image.stat)).st_size
    ephemeral_size = (disk_gb * GIB - image_size - swap_mb * MIB) // MIB * MIB
    try:
        async with asyncio.TaskGroup() as group:  # one failure cancels the others
            root = group.create_task(make_root(image, image_size, dest_dir, disk_gb, mode, templates))
            ephemeral = group.create_task(make_ephemeral(dest_dir, ephemeral_size, mode, templates))
            swap = group.create_task(make_swap(dest_dir, swap_mb, templates))
    except* (DiskError, OSError) as group_error:
        first = group_error.exceptions[0]
        message = str(first) if isinstance(first, DiskError) else f"{getattr(first, 'strerror', None) or first}"
        stat = await loop.run_in_executor(None, os.statvfs, dest_dir)
        if stat.f_bavail * stat.f_frsize < 64 * MIB and "No space left" not in message:
            message += " (No space left on device)"
        raise DiskError(message) from None
    return [disk for disk in (root.result(), ephemeral.result(), swap.result()) if disk is not None]
