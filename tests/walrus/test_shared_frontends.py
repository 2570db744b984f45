"""Several Walrus front ends on one object store (metadata in PostgreSQL, data in the session's Ceph pool): a write
acknowledged by one is what the other reads at once, multipart parts go to either, a kill -9 of one front end
during writes through both loses no acknowledged object, and each front end hears the others' changes (what its
bundled-image cache and bucket caches rely on)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from common.ceph import CephSettings
from services.walrus.storage import Acl, ChangeEvent, ObjectSpec
from services.walrus.storage.rados_data import RadosBlobs
from services.walrus.storage.shared import SharedBackend
from tests.ceph import WALRUS_POOL, ceph_settings, unique, walrus_rados_settings
from tests.waiting import wait_for
from tests.walrus.conftest import Walrus, start_walrus

MiB = 1 << 20


@pytest.fixture(scope="module")
def shared_store(ceph, postgres) -> dict[str, str]:
    """Settings of a Walrus front end on one shared store: a database and a RADOS namespace of its own."""
    return {
        **walrus_rados_settings(ceph, unique("shared")),
        "KOALA_WALRUS_DATABASE_URL": postgres.create_database("walrus"),
    }


@pytest.fixture(scope="module")
def fronts(tmp_path_factory: pytest.TempPathFactory, shared_store: dict[str, str]) -> Iterator[list[Walrus]]:
    started: list[Walrus] = []
    try:
        for name in ("a", "b"):
            started.append(start_walrus(tmp_path_factory.mktemp(f"front-{name}"), storage=shared_store))
        yield started
    finally:
        for front in started:
            front.cloud.stop()


def test_a_write_through_one_is_read_through_the_other(fronts: list[Walrus]) -> None:
    a, b = (front.client() for front in fronts)
    a.create_bucket(Bucket="shared")
    assert "shared" in [bucket["Name"] for bucket in b.list_buckets()["Buckets"]]
    small, large = os.urandom(4096), os.urandom(300 << 10)  # in the database / in RADOS
    for key, body in (("small", small), ("large", large)):
        a.put_object(Bucket="shared", Key=key, Body=body)
        assert b.get_object(Bucket="shared", Key=key)["Body"].read() == body
    for round_number in range(20):  # overwrites, alternating front ends, each read at once through the other
        body = f"round {round_number}".encode()
        writer, reader = (a, b) if round_number % 2 else (b, a)
        writer.put_object(Bucket="shared", Key="small", Body=body)
        assert reader.get_object(Bucket="shared", Key="small")["Body"].read() == body
    listed = b.list_objects_v2(Bucket="shared")["Contents"]
    assert sorted(item["Key"] for item in listed) == ["large", "small"]
    a.delete_object(Bucket="shared", Key="large")
    with pytest.raises(ClientError) as missing:
        b.get_object(Bucket="shared", Key="large")
    assert missing.value.response["Error"]["Code"] == "NoSuchKey"
    with pytest.raises(ClientError) as taken:  # one namespace of buckets: another account cannot take it
        fronts[1].client("bob").create_bucket(Bucket="shared")
    assert taken.value.response["Error"]["Code"] == "BucketAlreadyExists"


def test_bucket_settings_changed_on_one_apply_on_the_other(fronts: list[Walrus]) -> None:
    a, b = (front.client() for front in fronts)
    a.create_bucket(Bucket="versioned")
    b.head_bucket(Bucket="versioned")  # B has the bucket cached now
    a.put_bucket_versioning(Bucket="versioned", VersioningConfiguration={"Status": "Enabled"})
    wait_for(  # the change notification takes milliseconds
        lambda: b.get_bucket_versioning(Bucket="versioned").get("Status") == "Enabled",
        timeout=5,
        what="front end B to see versioning enabled",
    )
    first = b.put_object(Bucket="versioned", Key="k", Body=b"one")["VersionId"]
    second = a.put_object(Bucket="versioned", Key="k", Body=b"two")["VersionId"]
    assert first != second and "null" not in (first, second)
    versions = b.list_object_versions(Bucket="versioned")["Versions"]
    assert [v["VersionId"] for v in versions] == [second, first]
    assert b.get_object(Bucket="versioned", Key="k", VersionId=first)["Body"].read() == b"one"


def test_multipart_parts_through_both_front_ends(fronts: list[Walrus]) -> None:
    a, b = (front.client() for front in fronts)
    a.create_bucket(Bucket="multi")
    upload = a.create_multipart_upload(Bucket="multi", Key="big")["UploadId"]
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(1234)]
    etags = []
    for number, (client, body) in enumerate(zip((b, a, b), parts, strict=True), start=1):
        etags.append(client.upload_part(Bucket="multi", Key="big", UploadId=upload, PartNumber=number, Body=body))
    listed = a.list_parts(Bucket="multi", Key="big", UploadId=upload)["Parts"]
    assert [p["PartNumber"] for p in listed] == [1, 2, 3]
    b.complete_multipart_upload(
        Bucket="multi",
        Key="big",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e["ETag"]} for n, e in enumerate(etags, start=1)]},
    )
    assert a.get_object(Bucket="multi", Key="big")["Body"].read() == b"".join(parts)
    assert b.list_multipart_uploads(Bucket="multi").get("Uploads", []) == []


def test_kill_one_front_end_during_writes_through_both(
    tmp_path: Path, fronts: list[Walrus], shared_store: dict[str, str]
) -> None:
    """Writers on a front end of its own (killed -9 mid-way) and on B: every acknowledged object is readable
    through B afterwards, with its bytes."""
    victim = start_walrus(tmp_path / "victim", storage=shared_store)
    survivor = fronts[1]
    try:
        victim.client().create_bucket(Bucket="crash")
        acknowledged: dict[str, str] = {}
        lock = threading.Lock()
        stop = threading.Event()

        def writer(front: Walrus, name: str) -> None:
            client = front.client()
            n = 0
            while not stop.is_set():
                key = f"{name}-{n}"
                body = os.urandom(100 << 10 if n % 2 else 2000)
                try:
                    client.put_object(Bucket="crash", Key=key, Body=body)
                except Exception:  # the killed front end's writers fail from then on (not acknowledged)
                    time.sleep(0.05)
                else:
                    with lock:
                        acknowledged[key] = hashlib.md5(body).hexdigest()
                n += 1

        threads = [
            threading.Thread(target=writer, args=(front, f"{label}{i}"))
            for label, front in (("victim", victim), ("survivor", survivor))
            for i in range(3)
        ]
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        victim.cloud.kill("walrus")
        time.sleep(1.0)  # the survivor's writers go on after the kill
        stop.set()
        for thread in threads:
            thread.join(30)
        by_victim = [key for key in acknowledged if key.startswith("victim")]
        assert by_victim and len(acknowledged) > len(by_victim)
        reader = survivor.client()
        for key, digest in acknowledged.items():
            body = reader.get_object(Bucket="crash", Key=key)["Body"].read()
            assert hashlib.md5(body).hexdigest() == digest, key
    finally:
        victim.cloud.stop()


def test_changes_reach_the_other_front_ends_hooks(tmp_path: Path, ceph, postgres) -> None:
    """Two backends on one shared store in this process: B's change hooks (its bundled-image cache) hear A's
    overwrites and deletes as "remote" events; its own changes reach them once, locally."""
    settings = CephSettings.model_validate(ceph_settings(ceph))
    url, namespace = postgres.create_database("walrus"), unique("hooks")

    async def scenario() -> list[ChangeEvent]:
        a = SharedBackend(tmp_path / "a", url, RadosBlobs(settings, WALRUS_POOL, namespace))
        b = SharedBackend(tmp_path / "b", url, RadosBlobs(settings, WALRUS_POOL, namespace))
        await a.start()
        await b.start()
        heard: list[ChangeEvent] = []
        three_remote = asyncio.Event()

        def hook(event: ChangeEvent) -> None:
            heard.append(event)
            if len([e for e in heard if e.kind == "remote"]) >= 3:
                three_remote.set()

        b.change_hooks.append(hook)
        try:
            acl = Acl.private("111111111111", "alice")
            spec = ObjectSpec("111111111111", "alice", acl)
            await a.create_bucket("hooks", acl)
            for body in (b"first", b"second"):
                data = await a.new_data()
                await data.write(body)
                await data.finish()
                await a.commit_object("hooks", "bundle.part.0", data, spec)
            await a.delete_object("hooks", "bundle.part.0")
            data = await b.new_data()
            await data.write(b"local")
            await data.finish()
            await b.commit_object("hooks", "other", data, spec)
            await b.commit_object("hooks", "other", await _finished(b, b"again"), spec)
            with contextlib.suppress(TimeoutError):  # the assertions below say what was missing
                await asyncio.wait_for(three_remote.wait(), 5)
            await asyncio.sleep(0.3)  # anything late (a duplicate of B's own change) would arrive meanwhile
            return heard
        finally:
            await a.close()
            await b.close()

    heard = asyncio.run(scenario())
    remote = [(e.bucket, e.key) for e in heard if e.kind == "remote"]
    assert remote == [("hooks", "bundle.part.0")] * 3  # A's put, overwrite and delete
    local = [(e.kind, e.key) for e in heard if e.kind != "remote"]
    assert local == [("overwrite", "other")]  # B's own overwrite, heard once


async def _finished(backend: SharedBackend, body: bytes):
    data = await backend.new_data()
    await data.write(body)
    await data.finish()
    return data
