"""The version model of the embedded backend, as the S3 layer and other Walrus parts build on it: a key maps to
its versions (newest first), delete markers, `null` versions, the data each version keeps, Object Lock checks
and the paging of list_versions."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from pathlib import Path

import pytest

from services.walrus.storage import (
    Acl,
    BucketNotEmpty,
    DeleteMarkerHit,
    EmbeddedBackend,
    InvalidBucketState,
    NoSuchKey,
    NoSuchVersion,
    ObjectLocked,
    ObjectSpec,
)
from services.walrus.storage.data_store import INLINE_MAX
from services.walrus.storage.rows import new_version_id
from tests.walrus.stores import StoreMaker, stored_data

ACL = Acl.private("111111111111", "alice")
SPEC = ObjectSpec("111111111111", "alice", ACL)


async def put(storage: EmbeddedBackend, key: str, body: bytes, spec: ObjectSpec = SPEC) -> str:
    data = await storage.new_data()
    await data.write(body)
    await data.finish()
    return (await storage.commit_object("bkt", key, data, spec)).version_id


async def read(storage: EmbeddedBackend, key: str, version_id: str | None = None) -> bytes:
    async with await storage.open_object("bkt", key, version_id) as reader:
        return b"".join([c async for c in reader.iter_range(0, reader.info.size)])


def data_files(storage: EmbeddedBackend) -> int:
    return len(stored_data(storage))


async def settled_data_files(storage: EmbeddedBackend, expected: int) -> int:
    """The count of stored data once the removals in flight (done in a thread after the commit) are through."""
    for _ in range(100):
        if data_files(storage) == expected:
            break
        await asyncio.sleep(0.02)
    return data_files(storage)


@pytest.fixture
async def storage(tmp_path: Path, store_maker: StoreMaker):
    backend = store_maker.backend(tmp_path / "objects")
    await backend.start()
    await backend.create_bucket("bkt", ACL)
    try:
        yield backend
    finally:
        await backend.close()


async def test_unversioned_bucket_keeps_one_null_version(storage: EmbeddedBackend) -> None:
    assert await put(storage, "k", b"one" * 20000) == "null"  # files, not inline: larger than INLINE_MAX
    assert await put(storage, "k", b"two" * 20000) == "null"
    assert [(v.version_id, v.is_latest) for v in await storage.list_versions("bkt", "", "", "", 10)] == [("null", True)]
    assert await settled_data_files(storage, 1) == 1
    outcome = await storage.delete_object("bkt", "k")
    assert outcome is not None and not outcome.created and outcome.version_id == "null"
    assert await storage.list_versions("bkt", "", "", "", 10) == []
    assert await storage.delete_object("bkt", "k") is None


async def test_enabled_versions_markers_and_permanent_delete(storage: EmbeddedBackend) -> None:
    before = await put(storage, "k", b"from before versioning")
    await storage.set_bucket_versioning("bkt", "Enabled")
    v1 = await put(storage, "k", b"v1")
    v2 = await put(storage, "k", b"v2" * 20000)  # a data file (larger than INLINE_MAX)
    assert len({before, v1, v2}) == 3 and before == "null" and len(v1) == 32
    assert await read(storage, "k") == b"v2" * 20000
    assert await read(storage, "k", v1) == b"v1"
    assert await read(storage, "k", "null") == b"from before versioning"

    marker = await storage.delete_object("bkt", "k")
    assert marker is not None and marker.created and marker.delete_marker
    assert await storage.head_object("bkt", "k") is None
    with pytest.raises(DeleteMarkerHit) as hit:
        await storage.open_object("bkt", "k")
    assert hit.value.info.version_id == marker.version_id
    with pytest.raises(NoSuchKey):  # a DeleteMarkerHit is a NoSuchKey to callers that only know that
        await storage.open_object("bkt", "k", marker.version_id)
    with pytest.raises(NoSuchVersion):
        await storage.open_object("bkt", "k", "no-such-version-id")
    assert [o.key for o in await storage.list_objects("bkt", "", "", 10)] == []

    listed = await storage.list_versions("bkt", "", "", "", 10)
    assert [(v.version_id, v.is_latest, v.delete_marker) for v in listed] == [
        (marker.version_id, True, True),
        (v2, False, False),
        (v1, False, False),
        ("null", False, False),
    ]
    # removing the marker brings v2 back as the current version
    assert (await storage.delete_object("bkt", "k", marker.version_id)).delete_marker  # type: ignore[union-attr]
    assert await read(storage, "k") == b"v2" * 20000
    files = data_files(storage)
    await storage.delete_object("bkt", "k", v2)
    assert await read(storage, "k") == b"v1"
    assert await settled_data_files(storage, files - 1) == files - 1  # a version deleted for good gives its data back
    with pytest.raises(BucketNotEmpty):
        await storage.delete_bucket("bkt")


async def test_suspended_replaces_only_the_null_version(storage: EmbeddedBackend) -> None:
    await storage.set_bucket_versioning("bkt", "Enabled")
    v1 = await put(storage, "k", b"v1")
    await storage.set_bucket_versioning("bkt", "Suspended")
    assert await put(storage, "k", b"n1") == "null"
    assert await put(storage, "k", b"n2") == "null"
    marker = await storage.delete_object("bkt", "k")
    assert marker is not None and marker.version_id == "null" and marker.delete_marker
    listed = await storage.list_versions("bkt", "", "", "", 10)
    assert [(v.version_id, v.delete_marker) for v in listed] == [("null", True), (v1, False)]
    assert (await storage.get_bucket("bkt")).versioning == "Suspended"  # type: ignore[union-attr]


async def test_list_versions_pages_with_key_and_version_markers(storage: EmbeddedBackend) -> None:
    await storage.set_bucket_versioning("bkt", "Enabled")
    ids = {key: [await put(storage, key, key.encode() * n) for n in range(3)][::-1] for key in ("a", "b/1", "b/2")}
    every = [(k, v) for k in ("a", "b/1", "b/2") for v in ids[k]]
    pages, key_marker, version_marker = [], "", ""
    while True:
        page = await storage.list_versions("bkt", "", key_marker, version_marker, 2)
        if not page:
            break
        pages += [(v.key, v.version_id) for v in page]
        key_marker, version_marker = page[-1].key, page[-1].version_id
    assert pages == every
    assert [v.key for v in await storage.list_versions("bkt", "b/", "", "", 10)] == ["b/1"] * 3 + ["b/2"] * 3
    with pytest.raises(NoSuchVersion):
        await storage.list_versions("bkt", "", "a", ids["b/1"][0], 10)


async def test_object_lock_refuses_removal(storage: EmbeddedBackend) -> None:
    with pytest.raises(InvalidBucketState):
        await storage.set_bucket_object_lock("bkt", None)
    await storage.create_bucket("locked", ACL, object_lock=True)
    info = await storage.get_bucket("locked")
    assert info is not None and info.object_lock and info.versioning == "Enabled"
    with pytest.raises(InvalidBucketState):
        await storage.set_bucket_versioning("locked", "Suspended")
    until = time.time() + 3600
    data = await storage.new_data()
    await data.write(b"kept")
    await data.finish()
    spec = dataclasses.replace(SPEC, lock_mode="COMPLIANCE", lock_until=until)
    version = (await storage.commit_object("locked", "k", data, spec)).version_id
    with pytest.raises(ObjectLocked):
        await storage.delete_object("locked", "k", version, bypass_governance=True)
    with pytest.raises(ObjectLocked):  # never shortened
        await storage.set_object_lock("locked", "k", version, retention=("COMPLIANCE", until - 60))
    with pytest.raises(ObjectLocked):  # never weakened to GOVERNANCE
        await storage.set_object_lock("locked", "k", version, retention=("GOVERNANCE", until + 60))
    await storage.set_object_lock("locked", "k", version, retention=("COMPLIANCE", until + 60))  # extending is fine
    marker = await storage.delete_object("locked", "k")  # a delete marker is always allowed
    assert marker is not None and marker.created
    assert (await storage.get_version("locked", "k", version)).lock_until == until + 60  # type: ignore[union-attr]

    governed = await storage.commit_object(
        "locked", "g", await _data(storage, b"g"), dataclasses.replace(SPEC, lock_mode="GOVERNANCE", lock_until=until)
    )
    with pytest.raises(ObjectLocked):
        await storage.delete_object("locked", "g", governed.version_id)
    await storage.set_object_lock("locked", "g", governed.version_id, legal_hold=True)
    with pytest.raises(ObjectLocked):  # a legal hold holds even for those who may bypass governance
        await storage.delete_object("locked", "g", governed.version_id, bypass_governance=True)
    await storage.set_object_lock("locked", "g", governed.version_id, legal_hold=False)
    assert await storage.delete_object("locked", "g", governed.version_id, bypass_governance=True)


async def _data(storage: EmbeddedBackend, body: bytes):
    data = await storage.new_data()
    await data.write(body)
    await data.finish()
    return data


async def test_versions_and_locks_survive_a_restart(tmp_path: Path, store_maker: StoreMaker) -> None:
    backend = store_maker.backend(tmp_path / "objects")
    await backend.start()
    await backend.create_bucket("bkt", ACL, object_lock=True)
    spec = dataclasses.replace(SPEC, lock_mode="COMPLIANCE", lock_until=time.time() + 3600)
    version = await put(backend, "k", b"locked", spec)
    await put(backend, "k", b"newer")
    await backend.close()

    again = store_maker.backend(tmp_path / "objects")
    await again.start()
    try:
        assert await read(again, "k", version) == b"locked"
        assert await read(again, "k") == b"newer"
        with pytest.raises(ObjectLocked):
            await again.delete_object("bkt", "k", version, bypass_governance=True)
    finally:
        await again.close()


async def inline_rows(storage: EmbeddedBackend) -> int:
    return (await storage.db.query("SELECT COUNT(*) FROM inline_data"))[0][0]


async def test_small_objects_live_in_the_database(storage: EmbeddedBackend) -> None:
    """Objects up to INLINE_MAX commit their bytes with their version (no data file); the bytes go with the
    version, a reader opened before an overwrite keeps them, a copy has its own, a multipart part is a file."""
    await put(storage, "small", b"s" * 4096)
    assert data_files(storage) == 0 and await inline_rows(storage) == 1
    assert await read(storage, "small") == b"s" * 4096
    reader = await storage.open_object("bkt", "small")
    await put(storage, "small", b"t" * 100)  # the null version replaced: its bytes go in the same transaction
    assert await inline_rows(storage) == 1
    assert b"".join([c async for c in reader.iter_range(0, reader.info.size)]) == b"s" * 4096
    await reader.close()
    assert await read(storage, "small") == b"t" * 100

    async with await storage.open_object("bkt", "small") as source:
        copied = await storage.copy_object(source, "bkt", "copy", SPEC)
    assert copied.size == 100 and await inline_rows(storage) == 2
    await storage.delete_object("bkt", "small")
    assert await read(storage, "copy") == b"t" * 100 and await inline_rows(storage) == 1

    big = b"b" * (INLINE_MAX + 1)
    await put(storage, "big", big)
    assert await settled_data_files(storage, 1) == 1 and await read(storage, "big") == big

    upload = await storage.create_upload("bkt", "mp", SPEC)
    data = await storage.new_data()
    await data.write(b"tiny part")
    await data.finish()
    part = await storage.commit_part(upload, 1, data, {})
    assert await settled_data_files(storage, 2) == 2  # parts are files, whatever their size
    done = await storage.complete_upload(upload, [(1, part.etag)], part.etag + "-1", {}, (0, 0))
    assert done.size == 9 and await read(storage, "mp") == b"tiny part"


async def test_inline_versions_survive_a_restart(tmp_path: Path, store_maker: StoreMaker) -> None:
    backend = store_maker.backend(tmp_path / "objects")
    await backend.start()
    await backend.create_bucket("bkt", ACL)
    await backend.set_bucket_versioning("bkt", "Enabled")
    first = await put(backend, "k", b"first")
    await put(backend, "k", b"second")
    await backend.close()
    again = store_maker.backend(tmp_path / "objects")
    await again.start()
    try:
        assert await read(again, "k") == b"second" and await read(again, "k", first) == b"first"
        await again.delete_object("bkt", "k", first)
        assert await inline_rows(again) == 1
    finally:
        await again.close()


async def test_tags_belong_to_their_version_and_survive_a_restart(
    storage: EmbeddedBackend, store_maker: StoreMaker
) -> None:
    await storage.set_bucket_versioning("bkt", "Enabled")
    first = await put(storage, "k", b"one", dataclasses.replace(SPEC, tags={"gen": "1"}))
    second = await put(storage, "k", b"two")
    updated = await storage.set_object_tags("bkt", "k", {"gen": "2"})
    assert updated.version_id == second and updated.tags == {"gen": "2"}
    with pytest.raises(NoSuchVersion):
        await storage.set_object_tags("bkt", "k", {}, "no-such-version")
    with pytest.raises(NoSuchKey):
        await storage.set_object_tags("bkt", "other", {})
    marker = await storage.delete_object("bkt", "k")
    assert marker is not None and marker.created
    with pytest.raises(DeleteMarkerHit):
        await storage.set_object_tags("bkt", "k", {}, marker.version_id)
    await storage.close()
    reopened = store_maker.backend(storage.root)
    await reopened.start()
    try:
        assert (await reopened.get_version("bkt", "k", first)).tags == {"gen": "1"}
        assert (await reopened.get_version("bkt", "k", second)).tags == {"gen": "2"}
    finally:
        await reopened.close()
    await storage.start()


def test_version_ids_are_url_safe_and_never_look_like_an_option() -> None:
    """A client names a version on its command line (`aws s3api get-object --version-id ID`): an id starting with
    "-" was taken there for an option, one in 64 of them (5,000 ids: such an id ~78 times over)."""
    ids = [new_version_id() for _ in range(5000)]
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{31}", i) for i in ids), [i for i in ids if i[0] == "-"][:3]
    assert len(set(ids)) == len(ids)
