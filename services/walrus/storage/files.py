"""The default blobs: files on the local disk (`data/ab/ab12...`, named by data id, never by a user's key).

Files are immutable once committed, so several objects may share one inode through hard links (server-side
copies). A new file is created at its final path in the thread that first writes to it (creating waits on the
directory), so a small object costs one trip to a thread: create, write, fsync (the file and its directory).
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
from pathlib import Path
from typing import BinaryIO

from services.walrus.storage.blobs import BlobReader, Blobs, NewData, new_data_id


class FileTempData(NewData):
    """A new data file at its final path, visible to no one until a metadata commit names it."""

    def __init__(self, data_id: str, files: LocalFiles, hashes: tuple[str, ...], inline_max: int):
        super().__init__(data_id, hashes, inline_max)
        self.files = files
        self._fd: int | None = None

    @functools.cached_property
    def path(self) -> Path:
        """Computed when first needed: a small body kept in the database never has one."""
        return self.files.path(self.data_id)

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return self._fd

    def _write(self, pieces: list[bytes]) -> None:
        fd = self._open()
        if not pieces:
            return
        written = os.writev(fd, pieces)
        total = sum(len(p) for p in pieces)
        if written < total:  # a short write: finish the rest piece by piece
            rest = memoryview(b"".join(pieces))[written:]
            while rest:
                rest = rest[os.write(fd, rest) :]

    def _make_durable(self) -> None:
        if self.files.fsync:
            os.fsync(self._open())
            fsync_dir(self.path.parent)  # the new name survives a power cut too

    def _discard(self) -> None:
        self.path.unlink(missing_ok=True)

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class FileBlob(BlobReader):
    def __init__(self, path: Path):
        self.path = path
        self._file: BinaryIO | None = None

    def file(self) -> BinaryIO:
        if self._file is None:  # opened on first use, closed by close()
            self._file = open(self.path, "rb")
        return self._file

    async def read(self, offset: int, count: int) -> bytes:
        fd = self.file().fileno()
        return await asyncio.get_running_loop().run_in_executor(None, os.pread, fd, count, offset)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class LocalFiles(Blobs):
    def __init__(self, data_dir: Path, tmp_dir: Path, fsync: bool = True):
        self.data_dir, self.tmp_dir, self.fsync = Path(data_dir), Path(tmp_dir), fsync

    def path(self, data_id: str) -> Path:
        return self.data_dir / data_id[:2] / data_id

    async def start(self) -> None:
        def make() -> None:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            for i in range(256):
                (self.data_dir / f"{i:02x}").mkdir(parents=True, exist_ok=True)

        await asyncio.get_running_loop().run_in_executor(None, make)

    def new(self, hashes: tuple[str, ...], inline_max: int) -> FileTempData:
        return FileTempData(new_data_id(), self, hashes, inline_max)

    def open(self, data_id: str) -> FileBlob:
        return FileBlob(self.path(data_id))

    async def copy(self, pairs: list[tuple[str, str]]) -> None:
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
                    fsync_dir(d)

        await asyncio.get_running_loop().run_in_executor(None, link)

    async def remove(self, data_ids: list[str]) -> None:
        paths = [self.path(d) for d in data_ids]

        def unlink() -> None:
            for path in paths:
                path.unlink(missing_ok=True)

        await asyncio.get_running_loop().run_in_executor(None, unlink)

    async def sweep(self, referenced: set[str]) -> int:
        def sweep() -> int:
            for entry in os.scandir(self.tmp_dir):  # left by versions before data was written in place
                os.unlink(entry.path)
            removed = 0
            for sub in os.scandir(self.data_dir):
                for entry in os.scandir(sub.path):
                    if entry.name not in referenced:
                        os.unlink(entry.path)
                        removed += 1
            return removed

        return await asyncio.get_running_loop().run_in_executor(None, sweep)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
