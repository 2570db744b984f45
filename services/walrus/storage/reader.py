"""An open version of the embedded backend: its data stays readable until the reader closes, even when the version
is overwritten or deleted meanwhile (the data store unlinks held data only after its last reader)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import IO

from services.walrus.storage.base import ObjectInfo, ObjectReader
from services.walrus.storage.data_store import DataStore


class EmbeddedReader(ObjectReader):
    def __init__(self, store: DataStore, info: ObjectInfo, inline: dict[str, bytes] | None = None):
        self.store, self.info = store, info
        self.inline = inline or {}  # bytes of the inline segments, read when the object was opened
        self._files: dict[str, IO[bytes]] = {}
        self._closed = False
        store.acquire(info.segments)

    def _pieces(self, start: int, end: int) -> list[tuple[str, int, int]]:
        pieces, offset = [], 0
        for data_id, size in self.info.segments:
            lo, hi = max(start, offset), min(end, offset + size)
            if lo < hi:
                pieces.append((data_id, lo - offset, hi - lo))
            offset += size
            if offset >= end:
                break
        return pieces

    def _file(self, data_id: str) -> IO[bytes]:
        handle = self._files.get(data_id)
        if handle is None:
            handle = self._files[data_id] = open(self.store.path(data_id), "rb")
        return handle

    def file_ranges(self, start: int, end: int) -> list[tuple[IO[bytes], int, int]] | None:
        if self.inline:
            return None
        return [(self._file(data_id), offset, count) for data_id, offset, count in self._pieces(start, end)]

    async def iter_range(self, start: int, end: int, chunk: int = 1 << 20) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        for data_id, offset, count in self._pieces(start, end):
            if data_id in self.inline:
                yield self.inline[data_id][offset : offset + count]
                continue
            fd = self._file(data_id).fileno()
            done = 0
            while done < count:
                data = await loop.run_in_executor(None, os.pread, fd, min(chunk, count - done), offset + done)
                if not data:
                    raise OSError(f"data file {data_id} is shorter than recorded")
                done += len(data)
                yield data

    async def read_small(self) -> bytes:
        """The whole body of a small object, from memory when it was read before."""
        single = self.info.segments[0][0] if len(self.info.segments) == 1 else None
        if single is not None:
            cached = self.inline.get(single) or self.store.small_get(single)
            if cached is not None:
                return cached
        body = await super().read_small()
        if single is not None:
            self.store.small_put(single, body)
        return body

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for handle in self._files.values():
            handle.close()
        self._files.clear()
        self.store.release(self.info.segments)
