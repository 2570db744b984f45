"""The node-local image cache: INSTANCE_PATH/cache/<image id>/<sha256 prefix>.img, NC_CACHE_SIZE MB, real LRU.

- One download per image however many instances want it at once: callers share one in-flight future.
- Every hit is re-checked with Walrus (`if_manifest_digest`: a 304 when unchanged), so a re-bundled image under
  the same manifest is fetched again; if Walrus cannot be reached, the cached copy is used.
- Files are named by content, so a new version never overwrites a file an instance's overlay still uses:
  versions in use are pinned, the replaced ones are deleted when their last instance goes.
- Eviction is least-recently-used (`last_used` updated on every use, not file mtime), skipping pinned files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from pathlib import Path

import aiosqlite

from common.decrypted_images import ImageFetchError, WalrusImages
from common.ids import is_id
from common.messages.cc_nc import ImageRef

log = logging.getLogger("koala.nc.cache")


class ImageCache:
    def __init__(self, db: aiosqlite.Connection, root: Path, limit_mb: int, walrus: WalrusImages):
        self.db, self.root, self.walrus = db, root, walrus
        self.limit = limit_mb * 1024 * 1024
        self._inflight: dict[str, asyncio.Future[Path]] = {}
        self._pins: Counter[Path] = Counter()
        self._stale: set[Path] = set()  # replaced versions still pinned by an instance
        self.downloads = 0  # for tests and the benchmark

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def image_dir(self, image_id: str) -> Path:
        if not is_id(image_id) or image_id.split("-")[0] not in ("emi", "eki", "eri"):
            raise ImageFetchError("InvalidImageId", f"{image_id!r} is not an image id")
        return self.root / image_id.lower()

    # --- pins ---------------------------------------------------------------------------------------------
    def pin(self, path: Path) -> None:
        self._pins[path] += 1

    def release(self, path: Path) -> None:
        self._pins[path] -= 1
        if self._pins[path] <= 0:
            del self._pins[path]
            if path in self._stale:
                self._stale.discard(path)
                path.unlink(missing_ok=True)

    # --- lookup -------------------------------------------------------------------------------------------
    async def acquire(self, ref: ImageRef, pins: list[Path] | None = None) -> Path:
        """The cached file of `ref`, fetched if needed, pinned until `release` (and appended to `pins`).

        The download runs in a task of its own that every caller awaits shielded: a caller that is cancelled
        (its instance was terminated during staging) does not cancel the others' download.
        """
        image_id = ref.id.lower()
        task = self._inflight.get(image_id)
        if task is None:
            task = asyncio.ensure_future(self._obtain(image_id, ref.manifest))
            self._inflight[image_id] = task
            task.add_done_callback(lambda done: self._done(image_id, done))
        path = await asyncio.shield(task)
        self.pin(path)
        if pins is not None:
            pins.append(path)
        return path

    def _done(self, image_id: str, task: asyncio.Future[Path]) -> None:
        if self._inflight.get(image_id) is task:
            del self._inflight[image_id]
        if not task.cancelled():
            task.exception()  # mark retrieved: the callers got it

    async def _obtain(self, image_id: str, manifest: str) -> Path:
        directory = self.image_dir(image_id)
        row = await self._row(image_id)
        if row is not None and row["manifest"] == manifest and (directory / row["file"]).exists():
            try:
                current = await self.walrus.describe(manifest)
            except ImageFetchError as err:
                if err.code != "WalrusUnreachable":
                    raise
                log.warning("%s: Walrus unreachable, using the cached copy (%s)", image_id, err.message)
                return await self._touch(image_id, directory / row["file"])
            if current.sha256 == row["sha256"]:
                return await self._touch(image_id, directory / row["file"])
            log.info("%s: the image behind %s changed: fetching it again", image_id, manifest)
        directory.mkdir(parents=True, exist_ok=True)
        download = directory / f"download-{secrets.token_hex(4)}.tmp"
        fetched = await self.walrus.fetch(manifest, download, self.limit)
        self.downloads += 1
        final = directory / f"{fetched.sha256[:16]}.img"
        download.replace(final)
        if row is not None and row["file"] != final.name:
            self._retire(directory / row["file"])
        await self.db.execute(
            "INSERT OR REPLACE INTO image_cache(image_id, manifest, sha256, file, size, last_used)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (image_id, manifest, fetched.sha256, final.name, fetched.size, time.time()),
        )
        await self.db.commit()
        log.info("%s: cached %d bytes from %s", image_id, fetched.size, manifest)
        await self._evict(keep=image_id)
        return final

    async def _row(self, image_id: str) -> aiosqlite.Row | None:
        async with self.db.execute("SELECT * FROM image_cache WHERE image_id = ?", (image_id,)) as cursor:
            return await cursor.fetchone()

    async def _touch(self, image_id: str, path: Path) -> Path:
        await self.db.execute("UPDATE image_cache SET last_used = ? WHERE image_id = ?", (time.time(), image_id))
        await self.db.commit()
        return path

    def _retire(self, path: Path) -> None:
        if self._pins.get(path):
            self._stale.add(path)
        else:
            path.unlink(missing_ok=True)

    async def usage(self) -> int:
        async with self.db.execute("SELECT COALESCE(SUM(size), 0) FROM image_cache") as cursor:
            row = await cursor.fetchone()
        stale = 0
        for path in self._stale:
            with contextlib.suppress(OSError):
                stale += path.stat().st_size
        return (int(row[0]) if row else 0) + stale

    async def _evict(self, keep: str) -> None:
        """Drop least-recently-used unpinned images until the cache fits its size."""
        total = await self.usage()
        if total <= self.limit:
            return
        async with self.db.execute("SELECT image_id, file, size FROM image_cache ORDER BY last_used") as cursor:
            rows = await cursor.fetchall()
        for row in rows:
            if total <= self.limit:
                break
            path = self.root / row["image_id"] / row["file"]
            if row["image_id"] == keep or self._pins.get(path):
                continue
            await self.db.execute("DELETE FROM image_cache WHERE image_id = ?", (row["image_id"],))
            await self.db.commit()
            path.unlink(missing_ok=True)
            total -= row["size"]
            log.info("%s: evicted from the cache (least recently used)", row["image_id"])
        if total > self.limit:
            log.warning("image cache holds %d bytes, over its %d: the rest is in use", total, self.limit)

    async def cached(self) -> list[str]:
        async with self.db.execute("SELECT image_id FROM image_cache ORDER BY last_used") as cursor:
            return [row[0] for row in await cursor.fetchall()]

    async def sweep(self) -> None:
        """After adoption: remove files of no current version that no instance pins (e.g. after a crash)."""
        async with self.db.execute("SELECT image_id, file FROM image_cache") as cursor:
            current = {self.root / r["image_id"] / r["file"] for r in await cursor.fetchall()}
        for directory in self.root.iterdir() if self.root.exists() else []:
            if not directory.is_dir():
                continue
            for path in directory.iterdir():
                if path not in current and not self._pins.get(path):
                    path.unlink(missing_ok=True)
                elif path not in current:
                    self._stale.add(path)
