"""The embedded backend's object data and its life: blobs (blobs.py: data files under `data/xx/<id>` by default,
or RADOS objects), small bodies kept in the database instead (inline data, ids starting with "i"), which data the
open readers hold, removing data no committed row names any more (at once, or when its last reader closes), the
cache of small bodies, server-side copies (hard links for files), and the start-up sweep of leftovers."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from pathlib import Path

from services.walrus.storage import files
from services.walrus.storage.base import TempData
from services.walrus.storage.blobs import BlobReader, Blobs, NewData, new_data_id

log = logging.getLogger("koala.walrus.storage")

SMALL_OBJECT = 64 << 10  # bodies up to this size are served from memory once read
INLINE_MAX = 32 << 10  # bodies up to this size keep their bytes in the database (table inline_data)
SMALL_CACHE_BYTES = 64 << 20


def is_inline(data_id: str) -> bool:
    """A segment whose bytes are in inline_data (file data ids are hex only)."""
    return data_id.startswith("i")


Segments = tuple[tuple[str, int], ...]


class DataStore:
    def __init__(self, root: Path, fsync: bool = True, blobs: Blobs | None = None, removal_delay: float = 0.0):
        self.data_dir = root / "data"  # local files' place (when they are the blobs)
        self.blobs = blobs or files.LocalFiles(self.data_dir, root / "tmp", fsync)
        # Seconds between data losing its last row and its removal: readers in other processes sharing the store
        # (shared.py) cannot be counted, so they get this long to finish. 0: at once (or after the local readers).
        self.removal_delay = removal_delay
        self._delayed: set[asyncio.TimerHandle] = set()
        self._removals: set[asyncio.Task[None]] = set()
        self._readers: dict[str, int] = {}  # data id -> open readers
        self._doomed: set[str] = set()  # data ids no longer referenced, unlinked when their last reader closes
        self._small: OrderedDict[str, bytes] = OrderedDict()
        self._small_bytes = 0

    async def start(self) -> None:
        await self.blobs.start()

    async def close(self) -> None:
        for handle in self._delayed:  # what they would have removed, the next start-up sweep does
            handle.cancel()
        self._delayed.clear()
        if self._removals:
            await asyncio.gather(*self._removals, return_exceptions=True)
        await self.blobs.close()

    def open(self, data_id: str) -> BlobReader:
        return self.blobs.open(data_id)

    # --- writing ---
    def new_data(self, hashes: tuple[str, ...]) -> NewData:
        return self.blobs.new(hashes, INLINE_MAX)

    async def place(self, data: TempData, allow_inline: bool = True) -> tuple[str, bytes | None]:
        """Finished data about to be committed: (its data id, its bytes if they go into the database with the
        metadata). Blob data was made durable in place by `finish`."""
        if not isinstance(data, NewData):
            raise TypeError(f"not this backend's data: {data!r}")
        await data.seal(allow_inline)
        if data.inline is not None:
            return "i" + data.data_id, data.inline
        return data.data_id, None

    async def link_copy(
        self, segments: Segments, inline_bytes: dict[str, bytes]
    ) -> tuple[list[tuple[str, int]], dict[str, bytes]]:
        """New names for a version's data: blob copies (hard links for immutable data files: a copy that costs no
        bytes), new inline ids for bytes kept in the database (`inline_bytes`: those of the source). (segments,
        inline bytes by new data id)."""
        inline: dict[str, bytes] = {}
        copied: list[tuple[str, int]] = []
        pairs = []
        for data_id, size in segments:
            new = new_data_id()
            if is_inline(data_id):
                inline["i" + new] = inline_bytes[data_id]
                copied.append(("i" + new, size))
            else:
                pairs.append((data_id, new))
                copied.append((new, size))
        if pairs:
            await self.blobs.copy(pairs)
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
        if self.removal_delay > 0:
            timer: list[asyncio.TimerHandle] = []

            def due() -> None:
                self._delayed.difference_update(timer)
                self._unlink_now(data_ids)

            timer.append(asyncio.get_running_loop().call_later(self.removal_delay, due))
            self._delayed.update(timer)
            return
        self._unlink_now(data_ids)

    def _unlink_now(self, data_ids: list[str]) -> None:
        task = asyncio.get_running_loop().create_task(self.blobs.remove(data_ids))
        self._removals.add(task)
        task.add_done_callback(self._removed)

    def _removed(self, task: asyncio.Task[None]) -> None:
        self._removals.discard(task)
        if not task.cancelled() and task.exception() is not None:  # the start-up sweep removes them later
            log.warning("removing unreferenced data failed: %s", task.exception())

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
    async def sweep(self, referenced: set[str]) -> int:
        """Remove what interrupted uploads left and the blobs no committed row names: how many blobs went."""
        return await self.blobs.sweep(referenced)
