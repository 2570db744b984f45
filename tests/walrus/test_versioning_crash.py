"""Crash safety of versions: kill -9 Walrus while clients PUT new versions, add delete markers and delete versions
for good in a versioned bucket. After a restart every acknowledged version is there with its bytes, every
acknowledged permanent delete stayed done, each key has exactly one current version, and no data file is left
that no version points at."""

from __future__ import annotations

import hashlib
import random
import threading
from pathlib import Path
from typing import Any

from services.walrus.storage.data_store import INLINE_MAX
from tests.walrus.conftest import start_walrus
from tests.walrus.crashes import kill_while_busy
from tests.walrus.stores import process_data_ids

KEYS = 4


def content(worker: int, number: int) -> bytes:
    size = random.Random(worker * 1000 + number).randint(1, 512 << 10)
    return random.Random(f"{worker}-{number}").randbytes(size)


def test_kill_during_versioned_put_and_delete(tmp_path: Path, walrus_storage: dict[str, str]) -> None:
    walrus = start_walrus(tmp_path, storage=walrus_storage)
    try:
        s3 = walrus.client()
        s3.create_bucket(Bucket="vcrash")
        s3.put_bucket_versioning(Bucket="vcrash", VersioningConfiguration={"Status": "Enabled"})
        acknowledged: dict[tuple[str, str], str | None] = {}  # (key, version id) -> md5, None for a marker
        removed: set[tuple[str, str]] = set()  # versions whose permanent delete was acknowledged
        removing: set[tuple[str, str]] = set()  # versions whose permanent delete was sent
        attempted: set[str] = set()
        lock = threading.Lock()

        def work(client: Any, worker: int, number: int) -> None:
            key = f"key-{number % KEYS}"
            if number % 5 == 0:  # a delete marker
                version = client.delete_object(Bucket="vcrash", Key=key)["VersionId"]
                with lock:
                    acknowledged[(key, version)] = None
            elif number % 7 == 0:  # a version of our own, deleted for good
                with lock:
                    mine = [kv for kv in acknowledged if kv[0] == key and kv not in removed]
                if mine:
                    victim = random.choice(mine)
                    with lock:
                        removing.add(victim)  # may be gone after the crash, acknowledged or not
                    client.delete_object(Bucket="vcrash", Key=victim[0], VersionId=victim[1])
                    with lock:
                        removed.add(victim)
            else:
                data = content(worker, number)
                digest = hashlib.md5(data).hexdigest()
                with lock:
                    attempted.add(digest)
                version = client.put_object(Bucket="vcrash", Key=key, Body=data)["VersionId"]
                with lock:
                    acknowledged[(key, version)] = digest

        kill_while_busy(  # while versions are being written and deleted
            walrus,
            work,
            lambda: len(acknowledged) >= 60 and len(removed) >= 5,
            "60 acknowledged versions and markers and 5 permanent deletes",
        )

        objects_dir = walrus.cloud.dir / "data" / "walrus" / "objects"
        walrus.cloud.start("walrus")
        client = walrus.client()
        versions: dict[tuple[str, str], dict] = {}
        markers: dict[tuple[str, str], dict] = {}
        for page in client.get_paginator("list_object_versions").paginate(Bucket="vcrash"):
            versions.update({(v["Key"], v["VersionId"]): v for v in page.get("Versions", [])})
            markers.update({(m["Key"], m["VersionId"]): m for m in page.get("DeleteMarkers", [])})
        for (key, version), digest in acknowledged.items():
            if (key, version) in removing - removed:
                continue
            if (key, version) in removed:
                assert (key, version) not in versions and (key, version) not in markers, "a removed version is back"
            elif digest is None:
                assert (key, version) in markers, f"acknowledged delete marker {key} {version} is gone"
            else:
                assert (key, version) in versions, f"acknowledged version {key} {version} is gone"
        for (key, version), item in versions.items():
            data = client.get_object(Bucket="vcrash", Key=key, VersionId=version)["Body"].read()
            assert hashlib.md5(data).hexdigest() in attempted and len(data) == item["Size"], f"{key} {version} corrupt"
        for key in {k for k, _ in list(versions) + list(markers)}:
            latest = [kv for kv, v in (versions | markers).items() if kv[0] == key and v["IsLatest"]]
            assert len(latest) == 1, f"{key} has {len(latest)} current versions"
        if not walrus_storage:  # local files
            assert list((objects_dir / "tmp").iterdir()) == [], "temporary data survived the restart"
        data_files = process_data_ids(walrus_storage, objects_dir)
        in_files = [v for v in versions.values() if v["Size"] > INLINE_MAX]  # smaller ones: in the database
        assert len(data_files) == len(in_files), "data files that no version points at survived the restart"
    finally:
        walrus.cloud.stop()
