"""Crash safety: kill -9 Walrus during concurrent uploads; after a restart every acknowledged object is intact
and nothing partial is visible, and the interrupted uploads' temporary data is gone."""

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

MiB = 1 << 20


def content(worker: int, number: int) -> bytes:
    size = random.Random(worker * 1000 + number).randint(1, 3 * MiB)
    return random.Random(f"{worker}-{number}").randbytes(size)


def test_kill_during_concurrent_uploads(tmp_path: Path, walrus_storage: dict[str, str]) -> None:
    walrus = start_walrus(tmp_path, storage=walrus_storage)
    try:
        walrus.client().create_bucket(Bucket="crash")
        acknowledged: dict[str, str] = {}  # key -> md5 of the last acknowledged version
        attempted: dict[str, set[str]] = {}  # key -> md5 of every version sent
        lock = threading.Lock()

        def upload(client: Any, worker: int, number: int) -> None:
            # every third upload overwrites a shared key: last writer wins, never a mix
            key = f"shared-{number % 3}" if number % 3 == 0 else f"w{worker}/obj{number}"
            data = content(worker, number)
            digest = hashlib.md5(data).hexdigest()
            with lock:
                attempted.setdefault(key, set()).add(digest)
            client.put_object(Bucket="crash", Key=key, Body=data)
            with lock:
                if not key.startswith("shared-"):
                    acknowledged[key] = digest

        kill_while_busy(walrus, upload, lambda: len(acknowledged) >= 30, "30 acknowledged uploads")

        objects_dir = walrus.cloud.dir / "data" / "walrus" / "objects"
        walrus.cloud.start("walrus")
        client = walrus.client()
        listed = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket="crash"):
            for item in page.get("Contents", []):
                listed[item["Key"]] = item
        for key, digest in acknowledged.items():
            assert key in listed, f"acknowledged {key} is gone"
            body = client.get_object(Bucket="crash", Key=key)["Body"].read()
            assert hashlib.md5(body).hexdigest() == digest, f"{key} is corrupt"
        for key, item in listed.items():
            body = client.get_object(Bucket="crash", Key=key)["Body"].read()
            assert hashlib.md5(body).hexdigest() in attempted[key], f"{key} is not a version anyone sent"
            assert len(body) == item["Size"]
        if not walrus_storage:  # local files
            assert list((objects_dir / "tmp").iterdir()) == [], "temporary data survived the restart"
        data_files = process_data_ids(walrus_storage, objects_dir)
        in_files = [item for item in listed.values() if item["Size"] > INLINE_MAX]  # smaller ones: in the database
        assert len(data_files) == len(in_files), "data files that no object points at survived the restart"
    finally:
        walrus.cloud.stop()


def test_kill_during_small_uploads_acknowledged_without_fsync(tmp_path: Path) -> None:
    """KOALA_WALRUS_FSYNC=false acknowledges a write once the kernel has it (no fdatasync): a kill -9 of Walrus still
    loses no acknowledged object (small ones, whose bytes go into the metadata log with their row)."""
    walrus = start_walrus(tmp_path, extra={"KOALA_WALRUS_FSYNC": "false"})
    try:
        walrus.client().create_bucket(Bucket="crash")
        acknowledged: dict[str, bytes] = {}
        lock = threading.Lock()

        def upload(client: Any, worker: int, number: int) -> None:
            key, data = f"w{worker}/small{number}", random.Random(f"{worker}/{number}").randbytes(4096)
            client.put_object(Bucket="crash", Key=key, Body=data)
            with lock:
                acknowledged[key] = data

        kill_while_busy(walrus, upload, lambda: len(acknowledged) >= 200, "200 acknowledged uploads", 0.02)

        walrus.cloud.start("walrus")
        client = walrus.client()
        for key, data in acknowledged.items():
            assert client.get_object(Bucket="crash", Key=key)["Body"].read() == data, f"acknowledged {key} lost"
    finally:
        walrus.cloud.stop()
