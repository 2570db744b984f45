"""An open version of the embedded backend: its data stays readable until the reader closes, even when the version
is overwritten or deleted meanwhile (the data store unlinks held data only after its last reader)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import IO

from services.walrus.storage.base import ObjectInfo, ObjectReader
from services.walrus.storage.blobs import BlobReader
from services.walrus.storage.data_store import DataStore


class EmbeddedReader(ObjectReader):
    def __init__(self, store: DataStore, info: ObjectInfo, inline: dict[str, bytes] | None = None):
        self.store, self.info = store, info
        self.inline = inline or {}  # bytes of the inline segments, read when the object was opened
        self._blobs: dict[str, BlobReader] = {}
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

    def _blob(self, data_id: str) -> BlobReader:
        blob = self._blobs.get(data_id)
        if blob is None:
            blob = self._blobs[data_id] = self.store.open(data_id)
        return blob

    def file_ranges(self, start: int, end: int) -> list[tuple[IO[bytes], int, int]] | None:
        if self.inline:
            return None
        ranges = []
        for data_id, offset, count in self._pieces(start, end):
            file = self._blob(data_id).file()
            if file is None:  # the blobs are not files (RADOS): no sendfile
                return None
            ranges.append((file, offset, count))
        return ranges

    async def iter_range(self, start: int, end: int, chunk: int = 1 << 20) -> AsyncIterator[bytes]:
        for data_id, offset, count in self._pieces(start, end):
            if data_id in self.inline:
                yield self.inline[data_id][offset : offset + count]
                continue
            blob = self._blob(data_id)
            done = 0
            while done < count:
                data = await blob.read(offset + done, min(chunk, count - done))
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
        for blob in self._blobs.values():
            blob.close()
        self._blobs.clear()
        self.store.release(self.info.segments)
