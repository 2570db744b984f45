"""Small PUTs that reach the group commit together are committed together (storage/add_version.py): a run of new
keys of one bucket in one statement per table, anything else one by one. Either way the result is the one that
committing them one after the other gives: bytes, version ids, current versions, the bucket's counters."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from services.walrus.storage import Acl, EmbeddedBackend, ObjectInfo, ObjectSpec
from services.walrus.storage.add_version import AddVersion, add_new_keys
from tests.walrus.stores import StoreMaker

ACL = Acl.private("111111111111", "alice")
SPEC = ObjectSpec("111111111111", "alice", ACL)


@pytest.fixture
async def storage(tmp_path: Path, store_maker: StoreMaker):
    backend = store_maker.backend(tmp_path / "objects")
    await backend.start()
    await backend.create_bucket("plain", ACL)
    await backend.create_bucket("versioned", ACL)
    await backend.set_bucket_versioning("versioned", "Enabled")
    try:
        yield backend
    finally:
        await backend.close()


async def commit(storage: EmbeddedBackend, bucket: str, key: str, body: bytes) -> ObjectInfo:
    data = await storage.new_data()
    await data.write(body)
    await data.finish()
    return await storage.commit_object(bucket, key, data, SPEC)


async def read(storage: EmbeddedBackend, bucket: str, key: str) -> bytes:
    async with await storage.open_object(bucket, key) as reader:
        return b"".join([c async for c in reader.iter_range(0, reader.info.size)])


async def counters(storage: EmbeddedBackend, bucket: str) -> tuple[int, int]:
    found = [info for info in await storage.list_buckets("111111111111") if info.name == bucket]
    return found[0].object_count, found[0].bytes_used


@pytest.mark.parametrize("bucket", ["plain", "versioned"])
async def test_a_burst_of_new_keys_then_overwrites_and_repeats(storage: EmbeddedBackend, bucket: str) -> None:
    first = {f"k{i:02d}": bytes([i]) * (100 + i) for i in range(20)}
    stored = await asyncio.gather(*(commit(storage, bucket, key, body) for key, body in first.items()))
    ids = [info.version_id for info in stored]
    if bucket == "plain":
        assert ids == ["null"] * 20
    else:
        assert "null" not in ids and len(set(ids)) == 20
    for info, (key, body) in zip(stored, first.items(), strict=True):
        assert info.key == key and info.is_latest and info.size == len(body)
        assert await read(storage, bucket, key) == body
        head = await storage.head_object(bucket, key)
        assert head is not None and head.version_id == info.version_id
    assert await counters(storage, bucket) == (20, sum(map(len, first.values())))

    # five overwrites, five new keys and one new key written twice, started together
    second = {**{f"k{i:02d}": b"over" * (i + 1) for i in range(5)}, **{f"n{i}": b"new" * (i + 1) for i in range(5)}}
    twice = [b"a" * 7, b"b" * 9]
    results = await asyncio.gather(
        *(commit(storage, bucket, key, body) for key, body in second.items()),
        *(commit(storage, bucket, "dup", body) for body in twice),
    )
    assert all(isinstance(info, ObjectInfo) for info in results)
    final = {**first, **second}
    for key, body in final.items():
        assert await read(storage, bucket, key) == body
    dup = await read(storage, bucket, "dup")
    assert dup in twice
    versions = await storage.list_versions(bucket, "", "", "", 1000)
    per_key: dict[str, int] = {}
    for version in versions:
        per_key[version.key] = per_key.get(version.key, 0) + 1
    if bucket == "plain":  # one null version per key, the older bytes gone
        assert set(per_key.values()) == {1}
        assert await counters(storage, bucket) == (len(final) + 1, sum(map(len, final.values())) + len(dup))
    else:  # every write kept
        assert all(per_key[key] == 2 for key in list(first)[:5]) and per_key["dup"] == 2
        every = [*first.values(), *second.values(), *twice]
        assert await counters(storage, bucket) == (len(every), sum(map(len, every)))


async def test_a_run_is_committed_together_only_when_it_is_all_new_keys_of_one_bucket(
    storage: EmbeddedBackend,
) -> None:
    """`add_new_keys` itself, inside a transaction on the backend's database thread: it takes a run of new keys and
    declines (writing nothing) a run with a known key, the same key twice, two buckets or a quota."""
    await commit(storage, "plain", "known", b"x")

    def add(bucket: str, key: str, quota: tuple[int, int] = (0, 0)) -> AddVersion:
        info = EmbeddedBackend._info(bucket, key, SPEC, "0" * 32, [(f"i{key}", 0)])
        return AddVersion(info, quota, {f"i{key}": b""}, storage._add_version)

    runs = {
        "new": [add("plain", "a"), add("plain", "b")],
        "known": [add("plain", "c"), add("plain", "known")],
        "twice": [add("plain", "d"), add("plain", "d")],
        "buckets": [add("plain", "e"), add("versioned", "f")],
        "quota": [add("plain", "g"), add("plain", "h", (1 << 20, 0))],
    }

    def attempt(conn: sqlite3.Connection) -> dict[str, bool]:
        taken = {}
        for name, run in runs.items():
            conn.execute("BEGIN IMMEDIATE")
            try:
                taken[name] = add_new_keys(conn, run) is not None
            finally:
                conn.execute("ROLLBACK")
        return taken

    assert await storage.db.run(attempt) == {
        "new": True,
        "known": False,
        "twice": False,
        "buckets": False,
        "quota": False,
    }
