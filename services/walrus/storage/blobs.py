"""Where the bytes of Walrus's object data live, below the data store's bookkeeping (data_store.py: readers,
inline bodies, when data may go): blobs named by data id.

A data id names bytes written once and never changed (a whole object, or one part of a multipart upload); rows
name data ids, so a blob store never sees a user's key. Two implementations: `files.LocalFiles` (files on the
local disk, the default) and `rados_data.RadosBlobs` (RADOS objects in a Ceph pool, KOALA_WALRUS_STORAGE=rados).

Life of a data id: `new` gives a writer (`NewData`) under a fresh id; after `finish` the bytes are durable but
named by no row; the backend commits a row naming them, or aborts (the writer removes them). `remove` drops
blobs no row names any more; `sweep` at start-up drops what a crash left unnamed.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import itertools
import os
import secrets
import zlib
from typing import Any

import crc32c

from services.walrus.storage.base import TempData

FLUSH_BYTES = 1 << 20  # write to the store (in a thread) once this much is buffered
HASH_PIECE = 2047  # hashlib keeps the interpreter lock for buffers shorter than 2048 bytes


class _DataIds:
    """Fresh data ids: 16 random hex digits drawn once per process, and a counter (a data id has to be unique, not
    secret: it is never shown to a client). One os.urandom per id let go of the interpreter lock on every PUT, and
    taking it back waited for the database thread (issue 18). The counter's low byte comes first: stores fan their
    files out by the first two digits (files.py). A forked child draws its own prefix."""

    def __init__(self) -> None:
        self.restart()
        os.register_at_fork(after_in_child=self.restart)

    def restart(self) -> None:
        self.prefix = secrets.token_hex(8)
        self.numbers = itertools.count()

    def next(self) -> str:
        number = next(self.numbers)
        return f"{number & 0xFF:02x}{self.prefix}{(number >> 8) & 0xFFFFFFFFFFFFFF:014x}"


_data_ids = _DataIds()


def new_data_id() -> str:
    return _data_ids.next()


def is_data_id(name: str) -> bool:
    return len(name) == 32 and all(c in "0123456789abcdef" for c in name)


class _Crc:
    """crc32 / crc32c with hashlib's update/digest shape (big-endian 4 bytes, as S3 encodes them)."""

    def __init__(self, castagnoli: bool):
        self.value = 0
        self.castagnoli = castagnoli

    def update(self, data: bytes) -> None:
        self.value = crc32c.crc32c(data, self.value) if self.castagnoli else zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


_HASHES = {"md5": hashlib.md5, "sha1": hashlib.sha1, "sha256": hashlib.sha256}


def make_hasher(name: str) -> Any:
    if name == "crc32":
        return _Crc(False)
    if name == "crc32c":
        return _Crc(True)
    if name in _HASHES:
        return _HASHES[name]()  # the named constructors: hashlib.new looks the name up again each time
    raise ValueError(f"unknown hash {name}")


class NewData(TempData):
    """New bytes under a fresh data id, hashed on the way; visible to no one until a metadata commit names them.
    Writing and hashing run in threads, one batch of each in flight, while the event loop reads the next batch
    from the network. Bytes that stay small (`inline_max`) and were never flushed are kept in memory
    (`inline`): the backend may store them with the metadata instead.

    A store implements the blocking hooks `_write` (append pieces), `_make_durable`, `_discard` and `_release`."""

    def __init__(self, data_id: str, hashes: tuple[str, ...], inline_max: int = 0):
        self.data_id = data_id
        self.inline_max = inline_max
        self.inline: bytes | None = None
        self.size = 0
        self.written = False  # something reached the store (its bytes must be removed on abort)
        self.committed = False
        self._hashers = {name: make_hasher(name) for name in ("md5", *hashes)}
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._pending: list[asyncio.Future[None]] = []
        self._digests: dict[str, bytes] = {}

    # --- what a store implements (blocking, called in a thread) ---
    @abc.abstractmethod
    def _write(self, pieces: list[bytes]) -> None:
        """Append `pieces` to the data."""

    @abc.abstractmethod
    def _make_durable(self) -> None:
        """After the last write: the bytes survive a crash once this returns."""

    @abc.abstractmethod
    def _discard(self) -> None:
        """Remove whatever was written (the data is not committed)."""

    def _release(self) -> None:
        """Let go of open handles (the data stays)."""

    # --- the writer ---
    def _hash(self, pieces: list[bytes]) -> None:
        for hasher in self._hashers.values():
            for piece in pieces:
                hasher.update(piece)  # hashlib releases the GIL for large buffers

    def _hash_holding_the_lock(self, body: bytes) -> None:
        """Hash small bytes on the event loop in pieces below the size from which hashlib lets go of the
        interpreter lock: letting go and taking it back cost more than such a hash, and taking it back waited for
        whichever thread had it meanwhile (the database thread), stalling every request."""
        view = memoryview(body)
        for hasher in self._hashers.values():
            for start in range(0, len(body), HASH_PIECE):
                hasher.update(view[start : start + HASH_PIECE])

    def _write_marked(self, pieces: list[bytes]) -> None:
        self.written = True
        self._write(pieces)

    async def _start_flush(self) -> None:
        await self._wait_pending()
        if self._buffered:
            pieces, self._buffer, self._buffered = self._buffer, [], 0
            loop = asyncio.get_running_loop()
            self._pending = [
                loop.run_in_executor(None, self._hash, pieces),
                loop.run_in_executor(None, self._write_marked, pieces),
            ]

    async def _wait_pending(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            results = await asyncio.gather(*pending, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result

    async def write(self, data: bytes) -> None:
        if not data:
            return
        self._buffer.append(data)
        self._buffered += len(data)
        self.size += len(data)
        if self._buffered >= FLUSH_BYTES:
            await self._start_flush()

    async def finish(self) -> None:
        """Flush and make durable; after this the digests are final (or the bytes are kept in `inline`)."""
        await self._wait_pending()
        pieces, self._buffer, self._buffered = self._buffer, [], 0
        if not self.written and self.size <= self.inline_max:  # small: kept in memory, no trip to a thread
            self.inline = b"".join(pieces)
            self._hash_holding_the_lock(self.inline)
            self._digests = {name: hasher.digest() for name, hasher in self._hashers.items()}
            return

        def last() -> None:
            if pieces:
                self._hash(pieces)
                self._write_marked(pieces)
            elif not self.written:
                self._write_marked([])  # an empty object still has its (empty) data
            self._make_durable()

        await asyncio.get_running_loop().run_in_executor(None, last)
        self._digests = {name: hasher.digest() for name, hasher in self._hashers.items()}

    def digest(self, name: str) -> bytes:
        return self._digests[name]

    def store_inline(self) -> None:
        """Blocking: put bytes kept in memory into the store after all, for callers that need them there."""
        if self.inline is None:
            return
        self._write_marked([self.inline])
        self._make_durable()
        self.inline = None

    async def seal(self, allow_inline: bool) -> None:
        """The data is about to be committed: stored (inline bytes too, unless `allow_inline`), handles closed."""
        if self.inline is not None and not allow_inline:
            await asyncio.get_running_loop().run_in_executor(None, self.store_inline)
        self._release()
        self.committed = True

    async def abort(self) -> None:
        try:
            await self._wait_pending()
        except OSError:
            pass
        self._release()
        if not self.committed and self.written:
            await asyncio.get_running_loop().run_in_executor(None, self._discard)


class BlobReader(abc.ABC):
    """One data id opened for reading."""

    def file(self) -> Any | None:
        """A file object for sendfile, when the store keeps files."""
        return None

    @abc.abstractmethod
    async def read(self, offset: int, count: int) -> bytes:
        """Up to `count` bytes at `offset` (fewer only at the end of the data)."""

    def close(self) -> None:
        return None


class Blobs(abc.ABC):
    """Bytes by data id. All methods are safe to call concurrently."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @abc.abstractmethod
    def new(self, hashes: tuple[str, ...], inline_max: int) -> NewData:
        """A writer under a fresh data id."""

    @abc.abstractmethod
    def open(self, data_id: str) -> BlobReader:
        """A reader of committed data (cheap: the store is touched on the first read)."""

    @abc.abstractmethod
    async def copy(self, pairs: list[tuple[str, str]]) -> None:
        """Make each (existing id, new id) pair's new id hold the same bytes, durably."""

    @abc.abstractmethod
    async def remove(self, data_ids: list[str]) -> None:
        """Drop data no row names any more (missing ids are fine)."""

    @abc.abstractmethod
    async def sweep(self, referenced: set[str]) -> int:
        """At start-up, before any writer: remove data whose id is not in `referenced`; how many were removed."""
