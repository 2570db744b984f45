"""The embedded backend's object data and its life: data files under `data/xx/<id>` (written by files.FileTempData),
small bodies kept in the database instead (inline data, ids starting with "i"), which data the open readers hold,
unlinking data no committed row names any more (at once, or when its last reader closes), the cache of small bodies,
server-side copies as hard links, and the start-up sweep of leftovers."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections import OrderedDict
from pathlib import Path

from services.walrus.storage import files
from services.walrus.storage.base import TempData

SMALL_OBJECT = 64 << 10  # bodies up to this size are served from memory once read
INLINE_MAX = 32 << 10  # bodies up to this size keep their bytes in the database (table inline_data)
SMALL_CACHE_BYTES = 64 << 20


def is_inline(data_id: str) -> bool:
    """A segment whose bytes are in inline_data (file data ids are hex only)."""
    return data_id.startswith("i")


Segments = tuple[tuple[str, int], ...]


class DataStore:
    def __init__(self, root: Path, fsync: bool = True):
        self.tmp_dir = root / "tmp"
        self.data_dir = root / "data"
        self.fsync = fsync
        self._readers: dict[str, int] = {}  # data id -> open readers
        self._doomed: set[str] = set()  # data ids no longer referenced, unlinked when their last reader closes
        self._small: OrderedDict[str, bytes] = OrderedDict()
        self._small_bytes = 0

    def make_dirs(self) -> None:
        """Blocking: the directories data files go in."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        for i in range(256):
            (self.data_dir / f"{i:02x}").mkdir(parents=True, exist_ok=True)

    def path(self, data_id: str) -> Path:
        return self.data_dir / data_id[:2] / data_id

    # --- writing ---
    def new_data(self, hashes: tuple[str, ...]) -> files.FileTempData:
        data_id = files.new_data_id()
        return files.FileTempData(data_id, self.path(data_id), hashes, self.fsync, INLINE_MAX)

    async def place(self, data: TempData, allow_inline: bool = True) -> tuple[str, bytes | None]:
        """Finished data about to be committed: (its data id, its bytes if they go into the database with the
        metadata). File data was written and fsynced in place by `finish`."""
        if not isinstance(data, files.FileTempData):
            raise TypeError(f"not this backend's data: {data!r}")
        if data.inline is not None and not allow_inline:
            await asyncio.get_running_loop().run_in_executor(None, data.write_file)
        data.close_fd()
        data.committed = True
        if data.inline is not None:
            return "i" + data.data_id, data.inline
        return data.data_id, None

    async def link_copy(
        self, segments: Segments, inline_bytes: dict[str, bytes]
    ) -> tuple[list[tuple[str, int]], dict[str, bytes]]:
        """New names for a version's data: hard links for immutable data files (a copy that costs no bytes), new
        inline ids for bytes kept in the database (`inline_bytes`: those of the source). (segments, inline bytes by
        new data id)."""
        inline: dict[str, bytes] = {}
        copied: list[tuple[str, int]] = []
        pairs = []
        for data_id, size in segments:
            new = files.new_data_id()
            if is_inline(data_id):
                inline["i" + new] = inline_bytes[data_id]
                copied.append(("i" + new, size))
            else:
                pairs.append((data_id, new))
                copied.append((new, size))

        def link() -> None:
            dirs = set()
            for old, new in pairs:
                try:
                    os.link(self.path(old), self.path(new))
                except OSError:  # no hard links here: copy the bytes
                    shutil.copyfile(self.path(old), self.path(new))
                dirs.add(self.path(new).parent)
            if self.fsync:
                for d in dirs:
                    files.fsync_dir(d)

        if pairs:
            await asyncio.get_running_loop().run_in_executor(None, link)
        return copied, inline

    # --- readers and the life of data ---
    def acquire(self, segments: Segments) -> None:
        for data_id, _ in segments:
            self._readers[data_id] = self._readers.get(data_id, 0) + 1

    def release(self, segments: Segments) -> None:
        dead = []
        for data_id, _ in segments:
            left = self._readers[data_id] - 1
            if left:
                self._readers[data_id] = left
            else:
                del self._readers[data_id]
                if data_id in self._doomed:
                    self._doomed.discard(data_id)
                    dead.append(data_id)
        if dead:
            self._unlink_later(dead)

    def drop(self, data_ids: list[str]) -> None:
        """Data no committed row references any more: unlink now, or when its last reader is done."""
        now = []
        for data_id in data_ids:
            self.small_drop(data_id)
            if is_inline(data_id):  # its row went with the version's
                continue
            if data_id in self._readers:
                self._doomed.add(data_id)
            else:
                now.append(data_id)
        if now:
            self._unlink_later(now)

    def _unlink_later(self, data_ids: list[str]) -> None:
        paths = [self.path(d) for d in data_ids]

        def unlink() -> None:
            for path in paths:
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass

        asyncio.get_running_loop().run_in_executor(None, unlink)

    # --- small bodies in memory ---
    def small_get(self, data_id: str) -> bytes | None:
        body = self._small.get(data_id)
        if body is not None:
            self._small.move_to_end(data_id)
        return body

    def small_put(self, data_id: str, body: bytes, committed_now: bool = False) -> None:
        """Remember a small body: one an open reader holds (so not dropped meanwhile), or one just committed."""
        if len(body) > SMALL_OBJECT or data_id in self._small or (data_id not in self._readers and not committed_now):
            return
        self._small[data_id] = body
        self._small_bytes += len(body)
        while self._small_bytes > SMALL_CACHE_BYTES:
            _, old = self._small.popitem(last=False)
            self._small_bytes -= len(old)

    def small_drop(self, data_id: str) -> None:
        body = self._small.pop(data_id, None)
        if body is not None:
            self._small_bytes -= len(body)

    # --- start-up ---
    async def sweep(self, referenced: set[str]) -> tuple[int, int]:
        """Remove interrupted uploads and the data files no committed row names: (temporary files, data files)."""

        def sweep() -> tuple[int, int]:
            tmp = 0
            for entry in os.scandir(self.tmp_dir):
                os.unlink(entry.path)
                tmp += 1
            data = 0
            for sub in os.scandir(self.data_dir):
                for entry in os.scandir(sub.path):
                    if entry.name not in referenced:
                        os.unlink(entry.path)
                        data += 1
            return tmp, data

        return await asyncio.get_running_loop().run_in_executor(None, sweep)
