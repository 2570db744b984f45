"""Data files of the embedded backend: writers of new data (hashing on the way, fsync) and the data layout.

Data files are named by random ids (`data/ab/ab12...`), never by a user's key, and are immutable once
committed, so several objects may share one inode through hard links (server-side copies).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import zlib
from pathlib import Path
from typing import Any

import crc32c

from services.walrus.storage.base import TempData

FLUSH_BYTES = 1 << 20  # write to disk (in a thread) once this much is buffered


def new_data_id() -> str:
    return secrets.token_hex(16)


class _Crc:
    """crc32 / crc32c with hashlib's update/digest shape (big-endian 4 bytes, as S3 encodes them)."""

    def __init__(self, castagnoli: bool):
        self.value = 0
        self.castagnoli = castagnoli

    def update(self, data: bytes) -> None:
        self.value = crc32c.crc32c(data, self.value) if self.castagnoli else zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


def make_hasher(name: str) -> Any:
    if name == "crc32":
        return _Crc(False)
    if name == "crc32c":
        return _Crc(True)
    if name in ("md5", "sha1", "sha256"):
        return hashlib.new(name)
    raise ValueError(f"unknown hash {name}")


class FileTempData(TempData):
    """A new data file at its final path, visible to no one until a metadata commit names it; writing and
    hashing run in threads (see _start_flush). The file is created in the thread that first writes to it
    (creating waits on the directory), so a small object costs one trip to a thread: create, write, fsync."""

    def __init__(self, data_id: str, path: Path, hashes: tuple[str, ...], fsync: bool = True, inline_max: int = 0):
        self.data_id = data_id
        self.inline_max = inline_max
        self.inline: bytes | None = None  # the bytes of data kept in memory (to be stored with the metadata)
        self.path = path
        self.size = 0
        self._hashers = {name: make_hasher(name) for name in ("md5", *hashes)}
        self._fd: int | None = None
        self._created = False
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._pending: list[asyncio.Future[None]] = []
        self.fsync = fsync
        self._digests: dict[str, bytes] = {}
        self.committed = False

    def _hash(self, pieces: list[bytes]) -> None:
        for hasher in self._hashers.values():
            for piece in pieces:
                hasher.update(piece)  # hashlib releases the GIL for large buffers

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            self._created = True
        return self._fd

    def _write(self, pieces: list[bytes]) -> None:
        fd = self._open()
        written = os.writev(fd, pieces)
        total = sum(len(p) for p in pieces)
        if written < total:  # a short write: finish the rest piece by piece
            rest = memoryview(b"".join(pieces))[written:]
            while rest:
                rest = rest[os.write(fd, rest) :]

    async def _start_flush(self) -> None:
        """Hash and write the buffered pieces in two threads at once, one batch of each in flight, while the
        event loop goes on reading the next batch from the network."""
        await self._wait_pending()
        if self._buffered:
            pieces, self._buffer, self._buffered = self._buffer, [], 0
            loop = asyncio.get_running_loop()
            self._pending = [
                loop.run_in_executor(None, self._hash, pieces),
                loop.run_in_executor(None, self._write, pieces),
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
        await self._wait_pending()
        pieces, self._buffer, self._buffered = self._buffer, [], 0
        if not self._created and self.size <= self.inline_max:  # small: no file, no fsync of its own
            self.inline = b"".join(pieces)
            self._hash([self.inline])  # a few KiB: cheaper here than a trip to a thread
            self._digests = {name: hasher.digest() for name, hasher in self._hashers.items()}
            return

        def last() -> None:
            fd = self._open()
            if pieces:
                self._hash(pieces)
                self._write(pieces)
            if self.fsync:
                os.fsync(fd)
                fsync_dir(self.path.parent)  # the new name survives a power cut too

        await asyncio.get_running_loop().run_in_executor(None, last)
        self._digests = {name: hasher.digest() for name, hasher in self._hashers.items()}

    def digest(self, name: str) -> bytes:
        return self._digests[name]

    def write_file(self) -> None:
        """Blocking: put data kept in memory into its file after all (fsynced), for callers that need one."""
        if self.inline is None:
            return
        self._write([self.inline])
        if self.fsync:
            os.fsync(self._open())
            fsync_dir(self.path.parent)
        self.inline = None

    def close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def abort(self) -> None:
        try:
            await self._wait_pending()
        except OSError:
            pass
        self.close_fd()
        if not self.committed and self._created:
            self.path.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
