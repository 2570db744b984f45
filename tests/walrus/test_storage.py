"""The embedded storage backend as the rest of Walrus (the bundled-image cache) uses it: change hooks, snapshot
readers that survive overwrites, last-writer-wins, and the start-up sweep."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import Counter
from pathlib import Path

import pytest

from services.walrus.storage import (
    Acl,
    BucketNotEmpty,
    ChangeEvent,
    EmbeddedBackend,
    NoSuchBucket,
    NoSuchKey,
    ObjectInfo,
    ObjectSpec,
)
from services.walrus.storage.blobs import is_data_id, new_data_id
from services.walrus.storage.files import LocalFiles
from tests.walrus.stores import StoreMaker, stored_data

ACL = Acl.private("111111111111", "alice")
SPEC = ObjectSpec("111111111111", "alice", ACL)


async def put(storage: EmbeddedBackend, key: str, body: bytes, chunk: int = 1 << 16) -> None:
    data = await storage.new_data(("sha256",))
    for i in range(0, len(body), chunk):
        await data.write(body[i : i + chunk])
    await data.finish()
    assert data.digest("sha256") == hashlib.sha256(body).digest()
    await storage.commit_object("bkt", key, data, SPEC)


async def read(storage: EmbeddedBackend, key: str) -> bytes:
    async with await storage.open_object("bkt", key) as reader:
        return b"".join([c async for c in reader.iter_range(0, reader.info.size)])


@pytest.fixture
async def storage(tmp_path: Path, store_maker: StoreMaker):
    backend = store_maker.backend(tmp_path / "objects")
    await backend.start()
    await backend.create_bucket("bkt", ACL)
    try:
        yield backend
    finally:
        await backend.close()


async def test_change_hooks_and_snapshot_readers(storage: EmbeddedBackend) -> None:
    events: list[ChangeEvent] = []
    async_events: list[str] = []

    async def async_hook(event: ChangeEvent) -> None:
        async_events.append(event.kind)

    storage.change_hooks += [events.append, async_hook]
    old = os.urandom(3 << 20)
    await put(storage, "image", old)
    assert events == []  # a new object is not a change of one
    reader = await storage.open_object("bkt", "image")
    await put(storage, "image", b"new version")
    assert [e.kind for e in events] == ["overwrite"] and async_events == ["overwrite"]
    assert events[0].old.etag == hashlib.md5(old).hexdigest() and events[0].old.owner_id == "111111111111"
    # the reader opened before the overwrite still reads the old bytes, whole
    assert b"".join([c async for c in reader.iter_range(0, reader.info.size)]) == old
    ranges = reader.file_ranges(0, reader.info.size)
    if isinstance(storage.data.blobs, LocalFiles):  # files to sendfile from, where the store keeps files
        assert ranges is not None and sum(count for _, _, count in ranges) == len(old)
    else:
        assert ranges is None
    await reader.close()
    assert await read(storage, "image") == b"new version"
    assert await storage.delete_object("bkt", "image")
    assert [e.kind for e in events] == ["overwrite", "delete"]
    with pytest.raises(NoSuchKey):
        await storage.open_object("bkt", "image")
    # the old data is gone once no reader holds it (removed in a thread: poll)
    left: set[str] = set()
    for _ in range(100):
        left = stored_data(storage)
        if not left:
            break
        await asyncio.sleep(0.01)
    assert left == set()


async def test_concurrent_writers_last_commit_wins(storage: EmbeddedBackend) -> None:
    bodies = [bytes([i]) * (200_000 + i) for i in range(8)]
    await asyncio.gather(*(put(storage, "same", body) for body in bodies))
    final = await read(storage, "same")
    assert final in bodies  # one whole version, never a mix
    info = await storage.head_object("bkt", "same")
    assert info is not None and info.etag == hashlib.md5(final).hexdigest()
    bucket = (await storage.list_buckets("111111111111"))[0]
    assert bucket.object_count == 1 and bucket.bytes_used == len(final)
    with pytest.raises(BucketNotEmpty):
        await storage.delete_bucket("bkt")


async def test_a_failing_writer_spares_the_others_committed_with_it(storage: EmbeddedBackend) -> None:
    """Small PUTs started together are committed together (one batch of the group commit, one transaction when all
    succeed): one that fails (its bucket is gone) fails alone, and every other one is kept, counted and readable."""
    bodies = {f"k{i}": bytes([i]) * (100 + i) for i in range(12)}

    async def commit(bucket: str, key: str, body: bytes) -> ObjectInfo:
        data = await storage.new_data()
        await data.write(body)
        await data.finish()
        return await storage.commit_object(bucket, key, data, SPEC)

    results = await asyncio.gather(
        *(commit("gone" if i % 3 == 0 else "bkt", key, body) for i, (key, body) in enumerate(bodies.items())),
        return_exceptions=True,
    )
    kept = {key: body for i, (key, body) in enumerate(bodies.items()) if i % 3}
    for i, key in enumerate(bodies):
        if key in kept:
            assert isinstance(results[i], ObjectInfo) and await read(storage, key) == kept[key]
        else:
            assert isinstance(results[i], NoSuchBucket)
            assert await storage.head_object("bkt", key) is None
    bucket = (await storage.list_buckets("111111111111"))[0]
    assert (bucket.object_count, bucket.bytes_used) == (len(kept), sum(map(len, kept.values())))


async def test_restart_sweeps_unreferenced_data(tmp_path: Path, store_maker: StoreMaker) -> None:
    root = tmp_path / "objects"
    storage = store_maker.backend(root)
    await storage.start()
    await storage.create_bucket("bkt", ACL)
    await put(storage, "kept", b"kept bytes" * 4000)  # larger than what the database keeps inline: a file
    interrupted = await storage.new_data()
    await interrupted.write(b"never committed" * 4000)
    await interrupted.finish()
    assert interrupted.data_id in stored_data(storage)  # type: ignore[attr-defined]
    await storage.close()  # as if the process died before the commit
    storage = store_maker.backend(root)
    await storage.start()
    try:
        assert await read(storage, "kept") == b"kept bytes" * 4000
        assert len(stored_data(storage)) == 1
        assert [o.key for o in await storage.list_objects("bkt", "", "", 10)] == ["kept"]
    finally:
        await storage.close()


def test_data_ids_are_unique_and_spread_over_the_stores_directories() -> None:
    """Data ids come from a per-process prefix and a counter (no os.urandom per PUT): still 32 hex digits, never
    twice the same, and spread evenly over the 256 directories a file store fans out by their first two digits."""
    ids = [new_data_id() for _ in range(4096)]
    assert all(is_data_id(data_id) for data_id in ids)
    assert len(set(ids)) == len(ids)
    fan_out = Counter(data_id[:2] for data_id in ids)
    assert len(fan_out) == 256 and set(fan_out.values()) == {16}
