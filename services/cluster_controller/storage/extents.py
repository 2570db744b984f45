"""Point-in-time copies of volume files and what changed between two of them, from the file system's own records.

On a file system with reflinks (XFS made with reflink=1, btrfs), `clone` makes a copy of a volume file that shares
all its blocks (FICLONE: instant, and atomic with respect to writes through tgtd). A snapshot reads such a frozen
copy, not the live file, so it is of one moment. The file system copies a shared block before it changes it (copy on
write), so a block of two frozen copies that sits at the same physical place in both holds the same bytes in both:
`changed_chunks` compares the copies' extent maps (FIEMAP) chunk by chunk and names the chunks whose maps differ,
which are the only ones a snapshot needs to read given its parent's frozen copy and chunk digests. Anything the maps
cannot vouch for (delayed allocation, encoded or unknown extents, a map that will not fit) counts as changed, and a
file system without reflinks gives no copy at all: then the snapshot reads the live file in full, as before.
"""

from __future__ import annotations

import array
import bisect
import errno
import fcntl
import os
import struct
from pathlib import Path

FICLONE = 0x40049409
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
# Extents whose physical place says nothing reliable about their bytes.
_UNSURE = 0x2 | 0x4 | 0x8 | 0x80 | 0x100  # UNKNOWN, DELALLOC, ENCODED, NOT_ALIGNED, DATA_INLINE
_UNWRITTEN = 0x800  # allocated, reads as zeros
_HEADER = struct.Struct("=QQLLLL")  # fm_start, fm_length, fm_flags, fm_mapped_extents, fm_extent_count, reserved
_EXTENT = struct.Struct("=QQQQQLLLL")  # logical, physical, length, 2 reserved, flags, 3 reserved
BATCH = 512  # extents per FIEMAP call
MAX_EXTENTS = 1 << 20  # a map longer than this is not worth comparing: the snapshot reads everything

Extent = tuple[int, int, int, int]  # logical, physical, length, flags (UNWRITTEN only, or -1 for unsure)


def clone(source: Path, target: Path) -> bool:
    """Make `target` a reflink copy of `source`; False (and no target) where the file system cannot."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as src, open(target, "wb") as dst:
        try:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.EPERM):
                raise
            ok = False
        else:
            ok = True
    if not ok:
        target.unlink(missing_ok=True)
    return ok


def extent_map(path: Path) -> list[Extent] | None:
    """The file's extents in logical order (holes are absent); None when the map cannot be trusted or is too long."""
    extents: list[Extent] = []
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        start = 0
        while start < size:
            buffer = array.array("B", bytes(_HEADER.size + BATCH * _EXTENT.size))
            _HEADER.pack_into(buffer, 0, start, size - start, FIEMAP_FLAG_SYNC, 0, BATCH, 0)
            fcntl.ioctl(file.fileno(), FS_IOC_FIEMAP, buffer, True)
            mapped = _HEADER.unpack_from(buffer, 0)[3]
            if mapped == 0:
                break
            last = False
            for index in range(mapped):
                logical, physical, length, _, _, flags, _, _, _ = _EXTENT.unpack_from(
                    buffer, _HEADER.size + index * _EXTENT.size
                )
                kind = -1 if flags & _UNSURE else flags & _UNWRITTEN
                extents.append((logical, physical, length, kind))
                start = logical + length
                last = bool(flags & FIEMAP_EXTENT_LAST)
            if last:
                break
            if len(extents) > MAX_EXTENTS:
                return None
    return extents


def _segments(extents: list[Extent], starts: list[int], begin: int, end: int) -> list[tuple[int, int, int, int]] | None:
    """The pieces of [begin, end) that `extents` map: (offset, physical, length, kind); None if one is unsure."""
    found: list[tuple[int, int, int, int]] = []
    index = max(bisect.bisect_right(starts, begin) - 1, 0)
    while index < len(extents):
        logical, physical, length, kind = extents[index]
        if logical >= end:
            break
        low, high = max(logical, begin), min(logical + length, end)
        if low < high:
            if kind == -1:
                return None
            piece = (low - begin, physical + (low - logical), high - low, kind)
            if (
                found
                and (last := found[-1])[0] + last[2] == piece[0]
                and last[1] + last[2] == piece[1]
                and (last[3] == kind)
            ):
                found[-1] = (last[0], last[1], last[2] + piece[2], kind)  # one run, however the file system splits it
            else:
                found.append(piece)
        index += 1
    return found


def changed_chunks(base: Path, current: Path, chunk: int, count: int) -> set[int] | None:
    """The chunks (of `chunk` bytes, `count` of them) whose bytes may differ between two frozen copies that share
    blocks; None when the maps cannot be compared (then every chunk must be read)."""
    first, second = extent_map(base), extent_map(current)
    if first is None or second is None:
        return None
    first_starts, second_starts = [e[0] for e in first], [e[0] for e in second]
    changed = set()
    for index in range(count):
        begin, end = index * chunk, (index + 1) * chunk
        a = _segments(first, first_starts, begin, end)
        b = _segments(second, second_starts, begin, end)
        if a is None or b is None or a != b:
            changed.add(index)
    return changed
