"""The lifecycle sweep: a background task that, every `interval` seconds, walks the buckets that have lifecycle
rules and carries out what is due: current versions expired (removed, or hidden behind a delete marker where
versioning is on), noncurrent versions removed, expired delete markers (the only version left of a key) removed,
incomplete multipart uploads aborted.

Crash safety: the sweep keeps no state of its own. Each action is one storage transaction guarded by what the
sweep saw (`if_latest`: only if that version is still current), so a sweep cut short by a crash leaves every
key either done or untouched, and the next sweep (level-triggered) finds what is still due and does it. Object
Lock is enforced below, in storage: a locked version is skipped, never removed."""

from __future__ import annotations

import asyncio
import logging
import time

from services.walrus.lifecycle.rules import Rule, rules_from_json
from services.walrus.storage import (
    BucketInfo,
    NoSuchBucket,
    NoSuchUpload,
    NoSuchVersion,
    ObjectInfo,
    ObjectLocked,
    StorageBackend,
)

log = logging.getLogger("koala.walrus.lifecycle")
PAGE = 1000
DAY = 86400.0


class LifecycleSweeper:
    def __init__(self, storage: StorageBackend, interval: float = 3600.0, day: float = DAY):
        self.storage = storage
        self.interval = interval
        self.day = day  # seconds in a lifecycle "day" (shortened only to test)
        self._task: asyncio.Task[None] | None = None
        self.sweeps = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:  # the next sweep tries again; one bad bucket must not stop the task
                log.exception("lifecycle sweep failed")

    async def sweep(self, now: float | None = None) -> dict[str, int]:
        """One pass over every bucket with rules; counts of what was done."""
        done = {"expired": 0, "noncurrent": 0, "markers": 0, "uploads": 0}
        for bucket in await self.storage.lifecycle_buckets():
            rules = [r for r in rules_from_json(bucket.lifecycle) if r.enabled]
            if not rules:
                continue
            try:
                await self._sweep_bucket(bucket, rules, time.time() if now is None else now, done)
            except NoSuchBucket:
                continue
        self.sweeps += 1
        if any(done.values()):
            log.info("lifecycle sweep: %s", ", ".join(f"{n} {what}" for what, n in done.items()))
        return done

    @staticmethod
    def _prefixes(rules: list[Rule]) -> list[str]:
        """The fewest key prefixes that cover every rule (each scanned once)."""
        found: list[str] = []
        for prefix in sorted({r.prefix for r in rules}):
            if not any(prefix.startswith(kept) for kept in found):
                found.append(prefix)
        return found

    async def _sweep_bucket(self, bucket: BucketInfo, rules: list[Rule], now: float, done: dict[str, int]) -> None:
        version_rules = [r for r in rules if r.expires_current or r.expired_delete_marker or r.noncurrent_days]
        for prefix in self._prefixes(version_rules):
            await self._sweep_versions(bucket, prefix, version_rules, now, done)
        upload_rules = [r for r in rules if r.abort_days is not None]
        for prefix in self._prefixes(upload_rules):
            await self._sweep_uploads(bucket, prefix, upload_rules, now, done)

    async def _sweep_versions(
        self, bucket: BucketInfo, prefix: str, rules: list[Rule], now: float, done: dict[str, int]
    ) -> None:
        key_marker, version_marker = "", ""
        group: list[ObjectInfo] = []  # the versions of one key, newest first
        while True:
            try:
                page = await self.storage.list_versions(bucket.name, prefix, key_marker, version_marker, PAGE)
            except NoSuchVersion:  # the page's last version went meanwhile: leave that key to the next sweep
                page = await self.storage.list_versions(bucket.name, prefix, key_marker, "", PAGE)
                group = []
            for info in page:
                if group and info.key != group[0].key:
                    await self._apply(bucket, group, rules, now, done)
                    group = []
                group.append(info)
            if len(page) < PAGE:
                break
            key_marker, version_marker = page[-1].key, page[-1].version_id
        if group:
            await self._apply(bucket, group, rules, now, done)

    async def _apply(
        self, bucket: BucketInfo, versions: list[ObjectInfo], rules: list[Rule], now: float, done: dict[str, int]
    ) -> None:
        key = versions[0].key
        current = versions[0] if versions[0].is_latest else None
        gone: set[str] = set()
        tags: dict[str, dict[str, str]] = {}  # version id -> its tags, read once for the rules that name tags

        async def tagged(rule: Rule, version: ObjectInfo) -> bool:
            if not rule.tags:
                return True
            if version.delete_marker:  # a marker has no tags
                return False
            if version.version_id not in tags:
                full = await self.storage.get_version(bucket.name, key, version.version_id)
                tags[version.version_id] = full.tags if full is not None else {}
            return rule.tags_match(tags[version.version_id])

        for rule in rules:
            if not rule.covers(key):
                continue
            if (
                current is not None
                and not current.delete_marker
                and current.version_id not in gone
                and rule.covers(key, current.size)
                and rule.current_expired(current.last_modified, now, self.day)
                and await tagged(rule, current)
            ):
                if await self._delete(bucket, key, None, if_latest=current.version_id):
                    gone.add(current.version_id)
                    done["expired"] += 1
            if rule.noncurrent_days is not None:
                newer = 0
                for index in range(1, len(versions)):
                    old = versions[index]
                    size = None if old.delete_marker else old.size
                    if old.version_id in gone or not rule.covers(key, size) or not await tagged(rule, old):
                        continue
                    since = versions[index - 1].last_modified  # it stopped being current when the next came
                    if rule.noncurrent_expired(since, newer, now, self.day):
                        if await self._delete(bucket, key, old.version_id):
                            gone.add(old.version_id)
                            done["noncurrent"] += 1
                    else:
                        newer += 1
            lone_marker = len(versions) == 1 and current is not None and current.delete_marker
            if current is None or not lone_marker:
                continue
            if rule.tags:  # never a lone marker's rule: it has no tags (and S3 refuses markers with tag filters)
                continue
            if (rule.expired_delete_marker or rule.expires_current) and current.version_id not in gone:
                if await self._delete(bucket, key, current.version_id, if_latest=current.version_id):
                    gone.add(current.version_id)
                    done["markers"] += 1

    async def _delete(self, bucket: BucketInfo, key: str, version_id: str | None, if_latest: str | None = None) -> bool:
        try:
            outcome = await self.storage.delete_object(
                bucket.name, key, version_id, if_latest=if_latest, owner=(bucket.owner_id, bucket.owner_name)
            )
        except ObjectLocked:  # Object Lock outranks lifecycle: the version stays
            return False
        return outcome is not None

    async def _sweep_uploads(
        self, bucket: BucketInfo, prefix: str, rules: list[Rule], now: float, done: dict[str, int]
    ) -> None:
        key_marker, id_marker = "", ""
        while True:
            page = await self.storage.list_uploads(bucket.name, prefix, key_marker, id_marker, PAGE)
            for upload in page:
                if any(r.covers(upload.key) and r.upload_expired(upload.initiated, now, self.day) for r in rules):
                    try:
                        await self.storage.abort_upload(upload.upload_id)
                        done["uploads"] += 1
                    except NoSuchUpload:
                        pass
            if len(page) < PAGE:
                return
            key_marker, id_marker = page[-1].key, page[-1].upload_id
