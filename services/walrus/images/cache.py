"""The decrypted-image cache: a directory of image files with a size cap, LRU by last use, one decryption per
image however many ask at once, and invalidation when the bundle behind an image changes.

On disk, per image: `<id>.img` (the image, complete: it is renamed into place only after fsync) and `<id>.json`
(what it was made from, written after the image). `<id>` is a hash of bucket and manifest key, so no client
string becomes a path. Work in progress lives in `tmp/` and is wiped at start, so a crash never leaves a half
image that is taken as valid; an image without its JSON, or whose size disagrees with it, is deleted at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common.bundle.errors import BundleError

log = logging.getLogger("koala.walrus.images")


def entry_id(bucket: str, manifest_key: str) -> str:
    return hashlib.sha256(f"{bucket}\0{manifest_key}".encode()).hexdigest()[:40]


def _is_id(name: str) -> bool:
    return len(name) == 40 and all(c in "0123456789abcdef" for c in name)


@dataclass
class Entry:
    """A cached image."""

    id: str
    bucket: str
    manifest_key: str
    part_keys: list[str]
    manifest_sha256: str
    size: int
    image_sha256: str
    created: float
    last_used: float = 0.0


@dataclass
class Produced:
    """What a producer reports about the image it wrote."""

    part_keys: list[str]
    manifest_sha256: str
    size: int
    image_sha256: str


@dataclass
class Flight:
    """A decryption in progress, shared by everyone who asks for the image meanwhile."""

    id: str
    bucket: str
    manifest_key: str
    future: asyncio.Future[Entry]
    keys: set[str] = field(default_factory=set)  # object keys it reads (filled by the producer)
    stale: bool = False
    reserved: int = 0
    task: asyncio.Task[None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)  # stops the decryption thread early


# A producer writes the image into the given path; it is told the flight so it can declare the keys it reads
# and the size to reserve (`reserve`) as soon as it knows them.
Producer = Callable[[Path, "Flight", Callable[[int], Awaitable[None]]], Awaitable[Produced]]


class ImageCache:
    def __init__(self, directory: Path, capacity: int):
        self.dir = Path(directory)
        self.tmp = self.dir / "tmp"
        self.capacity = capacity
        self.entries: OrderedDict[str, Entry] = OrderedDict()  # least recently used first
        self.flights: dict[str, Flight] = {}
        self.decryptions = 0  # producers started (for tests and metrics)
        self._lock = asyncio.Lock()  # guards space accounting

    # ------------------------------------------------------------ start-up

    def load(self) -> None:
        """Scan the directory (synchronously, before serving): drop leftovers, rebuild the LRU order."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)
        found: list[Entry] = []
        for meta in self.dir.glob("*.json"):
            if not _is_id(meta.stem):
                continue  # not ours (e.g. the remembered signers)
            image = meta.with_suffix(".img")
            try:
                entry = Entry(**json.loads(meta.read_text()))
                ok = entry.id == meta.stem and image.stat().st_size == entry.size
            except (OSError, ValueError, TypeError):
                ok = False
            if not ok:
                meta.unlink(missing_ok=True)
                image.unlink(missing_ok=True)
                continue
            entry.last_used = max(entry.last_used, meta.stat().st_mtime)
            found.append(entry)
        for image in self.dir.glob("*.img"):
            if _is_id(image.stem) and not image.with_suffix(".json").exists():
                image.unlink(missing_ok=True)  # renamed in, but the crash came before its JSON
        for entry in sorted(found, key=lambda e: e.last_used):
            self.entries[entry.id] = entry
        self._evict(0)

    # ------------------------------------------------------------ lookups

    @property
    def used(self) -> int:
        return sum(e.size for e in self.entries.values())

    @property
    def reserved(self) -> int:
        return sum(f.reserved for f in self.flights.values())

    def path(self, entry: Entry) -> Path:
        return self.dir / f"{entry.id}.img"

    def lookup(self, bucket: str, manifest_key: str) -> Entry | None:
        return self.entries.get(entry_id(bucket, manifest_key))

    def touch(self, entry: Entry) -> None:
        """Mark as used now: moves it to the most recently used end."""
        entry.last_used = time.time()
        if entry.id in self.entries:
            self.entries.move_to_end(entry.id)
            with contextlib.suppress(OSError):  # persists the LRU order across restarts (one metadata write)
                os.utime(self.dir / f"{entry.id}.json", (entry.last_used, entry.last_used))

    async def get(self, bucket: str, manifest_key: str, producer: Producer, *, wait: bool = True) -> Entry | None:
        """The cached image, made by `producer` if absent. Concurrent callers share one producer run; its
        failure is raised to every one of them and nothing is cached. With `wait=False`, returns None at once
        when the image is not cached yet (the decryption goes on in the background)."""
        key = entry_id(bucket, manifest_key)
        entry = self.entries.get(key)
        if entry is not None:
            self.touch(entry)
            return entry
        flight = self.flights.get(key)
        if flight is None:
            loop = asyncio.get_running_loop()
            flight = Flight(key, bucket, manifest_key, loop.create_future())
            flight.future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no warning
            self.flights[key] = flight
            self.decryptions += 1
            flight.task = asyncio.create_task(self._produce(flight, producer), name=f"decrypt {key}")
        if not wait:
            return None
        entry = await asyncio.shield(flight.future)
        self.touch(entry)
        return entry

    # ------------------------------------------------------------ producing

    async def _reserve(self, flight: Flight, size: int) -> None:
        if size > self.capacity:
            raise BundleError(
                "ImageTooLargeForCache",
                f"the image is {size} bytes; the image cache holds at most {self.capacity}",
                507,
            )
        async with self._lock:
            flight.reserved = size
            self._evict(0)

    async def _produce(self, flight: Flight, producer: Producer) -> None:
        temp = self.tmp / f"{flight.id}.{secrets.token_hex(6)}.part"
        try:
            produced = await producer(temp, flight, lambda size: self._reserve(flight, size))
            if flight.stale:
                raise BundleError("ImageChanged", "the bundle changed while it was being decrypted", 409)
            entry = Entry(
                id=flight.id,
                bucket=flight.bucket,
                manifest_key=flight.manifest_key,
                part_keys=produced.part_keys,
                manifest_sha256=produced.manifest_sha256,
                size=produced.size,
                image_sha256=produced.image_sha256,
                created=time.time(),
                last_used=time.time(),
            )
            await asyncio.to_thread(self._commit_files, temp, entry)
            if flight.stale:  # changed while the files were being committed
                self._remove_files(entry)
                raise BundleError("ImageChanged", "the bundle changed while it was being decrypted", 409)
            async with self._lock:
                flight.reserved = 0
                self.entries[entry.id] = entry
                self._evict(0)
            flight.future.set_result(entry)
            log.info("cached image %s/%s (%d bytes)", entry.bucket, entry.manifest_key, entry.size)
        except BaseException as err:
            temp.unlink(missing_ok=True)
            if flight.stale and isinstance(err, BundleError) and err.code == "Cancelled":
                err = BundleError("ImageChanged", "the bundle changed while it was being decrypted", 409)
            if not flight.future.done():
                flight.future.set_exception(err if isinstance(err, Exception) else BundleError("Cancelled", "stop"))
            if not isinstance(err, Exception):
                raise
            log.warning("decrypting %s/%s failed: %s", flight.bucket, flight.manifest_key, err)
        finally:
            if self.flights.get(flight.id) is flight:
                del self.flights[flight.id]

    def _commit_files(self, temp: Path, entry: Entry) -> None:
        """Image first (fsynced, renamed), then its JSON: the JSON's presence means a complete image."""
        with temp.open("rb+") as handle:
            os.fsync(handle.fileno())
        meta_tmp = self.tmp / f"{entry.id}.{secrets.token_hex(6)}.json"
        meta_tmp.write_text(json.dumps(asdict(entry)))
        with meta_tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        (self.dir / f"{entry.id}.json").unlink(missing_ok=True)
        os.replace(temp, self.dir / f"{entry.id}.img")
        os.replace(meta_tmp, self.dir / f"{entry.id}.json")
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ------------------------------------------------------------ removal

    def _evict(self, extra: int) -> None:
        """Drop least recently used images until cached + reserved + extra fits the cap."""
        while self.entries and self.used + self.reserved + extra > self.capacity:
            _, victim = self.entries.popitem(last=False)
            self._remove_files(victim)
            log.info("evicted image %s/%s (%d bytes)", victim.bucket, victim.manifest_key, victim.size)

    def _remove_files(self, entry: Entry) -> None:
        # JSON first: an image without its JSON is never served and is removed at the next start.
        # Readers that already opened the image keep reading it (POSIX unlink semantics).
        (self.dir / f"{entry.id}.json").unlink(missing_ok=True)
        (self.dir / f"{entry.id}.img").unlink(missing_ok=True)

    def flush(self, bucket: str, manifest_key: str) -> bool:
        key = entry_id(bucket, manifest_key)
        flight = self.flights.get(key)
        if flight is not None:
            flight.stale = True
            flight.cancel.set()
        entry = self.entries.pop(key, None)
        if entry is not None:
            self._remove_files(entry)
        return entry is not None

    def invalidate(self, bucket: str, key: str) -> int:
        """An object changed: drop every image made from it (manifest or part) and spoil decryptions reading it."""
        dropped = 0
        for entry in list(self.entries.values()):
            if entry.bucket == bucket and (entry.manifest_key == key or key in entry.part_keys):
                self.entries.pop(entry.id, None)
                self._remove_files(entry)
                dropped += 1
                log.info("invalidated image %s/%s: %s changed", bucket, entry.manifest_key, key)
        for flight in self.flights.values():
            if flight.bucket == bucket and (flight.manifest_key == key or key in flight.keys):
                flight.stale = True
                flight.cancel.set()
        return dropped

    async def close(self) -> None:
        for flight in list(self.flights.values()):
            flight.cancel.set()
            if flight.task is not None:
                flight.task.cancel()
        await asyncio.gather(*(f.task for f in self.flights.values() if f.task), return_exceptions=True)
