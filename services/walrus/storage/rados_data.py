"""Blobs in Ceph: each data id's bytes as RADOS objects in one pool and namespace, through librados.

A data id's bytes are cut in CHUNK-sized RADOS objects `<data id>.<n>` (n in hex from 0; a RADOS object should
stay well under the OSD's 128 MiB limit and small enough to spread over placement groups). Data ids are random
hex, so a user's key never names a RADOS object. An empty data has one empty chunk, so every data exists in the
pool from the moment it is finished.

RADOS acknowledges a write once it is durable on every replica, so `finish` needs no sync of its own. Removal
goes chunk by chunk from 0 until one is missing; what a crash leaves behind (chunks of uncommitted or removed
data) is found by the start-up sweep, which lists the namespace. The namespace therefore belongs to one Walrus
metadata store: two Walrus processes with their own databases must use two namespaces.

librados calls block: each runs in a thread (the binding releases the GIL around the I/O).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from common.ceph import CephSettings, connect, load_rados, open_pool
from services.walrus.storage.blobs import BlobReader, Blobs, NewData, is_data_id, new_data_id

CHUNK = 4 << 20


def chunk_name(data_id: str, index: int) -> str:
    return f"{data_id}.{index:x}"


def _read(ioctx: Any, data_id: str, offset: int, count: int) -> bytes:
    """Blocking: `count` bytes at `offset` of a data id, across chunks (fewer at its end)."""
    pieces: list[bytes] = []
    while count > 0:
        index, within = divmod(offset, CHUNK)
        want = min(count, CHUNK - within)
        piece = ioctx.read(chunk_name(data_id, index), want, within)
        pieces.append(piece)
        if len(piece) < want:
            break
        offset, count = offset + want, count - want
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _remove(ioctx: Any, data_id: str) -> None:
    """Blocking: every chunk of a data id (none is fine)."""
    rados = load_rados()
    index = 0
    while True:
        try:
            ioctx.remove_object(chunk_name(data_id, index))
        except rados.ObjectNotFound:
            return
        index += 1


class RadosNewData(NewData):
    def __init__(self, ioctx: Any, data_id: str, hashes: tuple[str, ...], inline_max: int):
        super().__init__(data_id, hashes, inline_max)
        self.ioctx = ioctx
        self._stored = 0  # bytes written to RADOS so far

    def _write(self, pieces: list[bytes]) -> None:
        if not pieces and self._stored == 0:
            self.ioctx.write_full(chunk_name(self.data_id, 0), b"")
            return
        data = memoryview(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        while data:
            index, within = divmod(self._stored, CHUNK)
            piece = data[: CHUNK - within]
            name = chunk_name(self.data_id, index)
            if within == 0:
                self.ioctx.write_full(name, bytes(piece))
            else:
                self.ioctx.write(name, bytes(piece), within)
            self._stored += len(piece)
            data = data[len(piece) :]

    def _make_durable(self) -> None:
        return None  # acknowledged RADOS writes are durable

    def _discard(self) -> None:
        _remove(self.ioctx, self.data_id)


class RadosBlob(BlobReader):
    def __init__(self, ioctx: Any, data_id: str):
        self.ioctx, self.data_id = ioctx, data_id

    async def read(self, offset: int, count: int) -> bytes:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, _read, self.ioctx, self.data_id, offset, count)


class RadosBlobs(Blobs):
    def __init__(self, settings: CephSettings, pool: str, namespace: str, sweep_min_age: float = 0.0):
        self.settings, self.pool, self.namespace = settings, pool, namespace
        # The sweep spares unnamed data written less than this many seconds ago: with several Walrus processes on
        # one namespace (shared metadata), another one may be about to commit it.
        self.sweep_min_age = sweep_min_age
        self.cluster: Any = None
        self._ioctx: Any = None

    @property
    def ioctx(self) -> Any:
        if self._ioctx is None:
            raise RuntimeError("the RADOS blob store is not started")
        return self._ioctx

    async def start(self) -> None:
        self.cluster = await connect(self.settings)
        try:
            self._ioctx = await open_pool(self.cluster, self.pool, self.namespace)
        except BaseException:
            self.cluster.shutdown()
            self.cluster = None
            raise

    async def close(self) -> None:
        ioctx, cluster, self._ioctx, self.cluster = self._ioctx, self.cluster, None, None

        def shut() -> None:
            if ioctx is not None:
                ioctx.close()
            if cluster is not None:
                cluster.shutdown()

        await asyncio.get_running_loop().run_in_executor(None, shut)

    def new(self, hashes: tuple[str, ...], inline_max: int) -> RadosNewData:
        return RadosNewData(self.ioctx, new_data_id(), hashes, inline_max)

    def open(self, data_id: str) -> RadosBlob:
        return RadosBlob(self.ioctx, data_id)

    async def copy(self, pairs: list[tuple[str, str]]) -> None:
        ioctx, rados = self.ioctx, load_rados()

        def copy() -> None:
            for old, new in pairs:
                index = 0
                while True:
                    try:
                        piece = ioctx.read(chunk_name(old, index), CHUNK, 0)
                    except rados.ObjectNotFound:  # the data's size is a multiple of CHUNK
                        break
                    ioctx.write_full(chunk_name(new, index), piece)
                    if len(piece) < CHUNK:
                        break
                    index += 1

        await asyncio.get_running_loop().run_in_executor(None, copy)

    async def remove(self, data_ids: list[str]) -> None:
        ioctx = self.ioctx

        def remove() -> None:
            for data_id in data_ids:
                _remove(ioctx, data_id)

        await asyncio.get_running_loop().run_in_executor(None, remove)

    async def sweep(self, referenced: set[str]) -> int:
        ioctx = self.ioctx

        min_age, rados = self.sweep_min_age, load_rados()

        def sweep() -> int:
            doomed: set[str] = set()
            recent: set[str] = set()
            for entry in ioctx.list_objects():
                data_id = entry.key.split(".", 1)[0]
                if not is_data_id(data_id) or data_id in referenced:
                    continue
                doomed.add(data_id)
                if min_age > 0:
                    try:
                        _, modified = ioctx.stat(entry.key)
                    except rados.ObjectNotFound:
                        continue
                    if time.time() - time.mktime(modified) < min_age:
                        recent.add(data_id)
            doomed -= recent
            for data_id in doomed:
                _remove(ioctx, data_id)
            return len(doomed)

        return await asyncio.get_running_loop().run_in_executor(None, sweep)
