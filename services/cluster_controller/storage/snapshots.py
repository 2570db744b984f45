"""Snapshots in Walrus, through its S3 API as any client would use it: compressed, content-addressed chunks.

A volume is cut into 4 MiB chunks. An all-zero chunk (a hole of the sparse file, or zeros) is stored as nothing;
every other chunk is an object `zones/<zone>/chunks/<sha256>` holding its zlib-compressed bytes (or its bytes as
they are when a sample shows they do not compress: see `encode`). A snapshot is a
manifest `snapshots/<snap-id>.json` listing the digests in order, so any zone can restore it. A volume's next
snapshot uploads only the chunks its previous snapshot (its parent) does not already hold: the changed blocks.
Deleting a snapshot removes its manifest and those of its chunks that no other snapshot of the zone lists, so
what later snapshots need stays. Taking and deleting are serialised by `lock`, so a deletion never removes a chunk
a snapshot in progress is reusing.

Reading, hashing, compressing and uploading run in a thread pool (zlib and hashlib release the GIL, so chunks are
compressed on every core while the event loop stays free).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shlex
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from services.cluster_controller.storage.files import GIB
from services.cluster_controller.storage.settings import StorageSettings

CHUNK = 4 << 20
SAMPLE = 64 << 10
WORKERS = 4
IN_FLIGHT = 12  # chunks read but not yet uploaded (memory: IN_FLIGHT x 4 MiB)
MAX_MANIFEST = 64 << 20
_ZERO = bytes(CHUNK)
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_PREFIX = re.compile(r"^zones/[a-z0-9.-]{1,64}/chunks/$")


class SnapshotError(Exception):
    pass


def read_credentials(path: Path) -> dict[str, str]:
    """EC2_ACCESS_KEY, EC2_SECRET_KEY and S3_URL from a eucarc-style file (`export KEY=value` lines)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export ") :]
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            continue
        if len(tokens) == 1 and "=" in tokens[0]:
            key, value = tokens[0].split("=", 1)
            values[key] = value
    return values


class SnapshotStore:
    def __init__(self, config: StorageSettings, zone: str = ""):
        self.url = config.KOALA_EBS_S3_URL
        self.credentials = config.KOALA_EBS_S3_CREDENTIALS
        self.bucket = config.KOALA_EBS_BUCKET
        self.zone = zone
        self.enabled = self.credentials is not None
        self.lock = asyncio.Lock()
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="snapshot")
        self._client: Any = None
        self._client_lock = threading.Lock()

    def chunk_key(self, digest: str) -> str:
        return f"zones/{self.zone}/chunks/{digest}"

    @staticmethod
    def manifest_key(snapshot_id: str) -> str:
        return f"snapshots/{snapshot_id}.json"

    def _s3(self) -> Any:
        with self._client_lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                if self.credentials is None:
                    raise SnapshotError("no KOALA_EBS_S3_CREDENTIALS")
                values = read_credentials(self.credentials)
                url = self.url or values.get("S3_URL", "")
                if not url or "EC2_ACCESS_KEY" not in values:
                    raise SnapshotError(f"{self.credentials} names no S3_URL / EC2_ACCESS_KEY")
                client = boto3.client(
                    "s3",
                    endpoint_url=url,
                    region_name="eucalyptus",
                    aws_access_key_id=values["EC2_ACCESS_KEY"],
                    aws_secret_access_key=values.get("EC2_SECRET_KEY", ""),
                    config=Config(
                        s3={"addressing_style": "path"},
                        signature_version="s3v4",
                        retries={"max_attempts": 4},
                        max_pool_connections=WORKERS * 2,
                    ),
                )
                try:
                    client.head_bucket(Bucket=self.bucket)
                except client.exceptions.ClientError:
                    client.create_bucket(Bucket=self.bucket)
                self._client = client
            return self._client

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # --- taking -------------------------------------------------------------------------------------------
    async def take(
        self,
        snapshot_id: str,
        path: Path,
        size_gb: int,
        reuse: set[str],
        progress: Callable[[int], None],
        unchanged_from: list[str] | None = None,
        changed: set[int] | None = None,
    ) -> tuple[list[str], int]:
        """Store the volume file's chunks (those not in `reuse`) and the manifest; (digests, bytes stored). With
        `changed` (the chunks that may differ from the parent, whose digests are `unchanged_from`), only those are
        read: every other chunk is the parent's."""
        return await asyncio.to_thread(
            self._take, snapshot_id, path, size_gb, reuse, progress, unchanged_from or [], changed
        )

    def _upload(self, digest: str, data: bytes) -> int:
        body = encode(data)
        self._s3().put_object(Bucket=self.bucket, Key=self.chunk_key(digest), Body=body)
        return len(body)

    def _take(
        self,
        snapshot_id: str,
        path: Path,
        size_gb: int,
        reuse: set[str],
        progress: Callable[[int], None],
        parent: list[str],
        changed: set[int] | None,
    ) -> tuple[list[str], int]:
        s3 = self._s3()
        count = (size_gb * GIB + CHUNK - 1) // CHUNK
        sent: set[str] = set()
        sent_lock = threading.Lock()

        def chunk(data: bytes) -> tuple[str, int]:
            """In the pool (hashing and compressing release the GIL): the digest, and the bytes stored for it."""
            if data == _ZERO[: len(data)]:
                return "", 0
            digest = hashlib.sha256(data).hexdigest()
            with sent_lock:
                new = digest not in reuse and digest not in sent
                sent.add(digest)
            return digest, self._upload(digest, data) if new else 0

        digests: list[str] = []
        pending: list[Future[tuple[str, int]]] = []
        stored = 0
        with open(path, "rb") as file:
            fd = file.fileno()
            for index in range(count):
                offset = index * CHUNK
                if changed is not None and index not in changed and index < len(parent):
                    pending.append(_done((parent[index], 0)))  # the parent's bytes, as the extent maps show
                elif _hole(fd, offset):
                    pending.append(_done(("", 0)))
                else:
                    pending.append(self._pool.submit(chunk, os.pread(fd, CHUNK, offset)))
                while len(pending) >= IN_FLIGHT or (pending and pending[0].done()):
                    digest, size = pending.pop(0).result()
                    digests.append(digest)
                    stored += size
                progress(int(90 * len(digests) / max(count, 1)))
        for future in pending:
            digest, size = future.result()
            digests.append(digest)
            stored += size
        manifest = {"version": 1, "snapshot_id": snapshot_id, "size_gb": size_gb, "chunk_size": CHUNK,
                    "chunk_prefix": f"zones/{self.zone}/chunks/", "chunks": digests}  # fmt: skip
        s3.put_object(Bucket=self.bucket, Key=self.manifest_key(snapshot_id), Body=json.dumps(manifest).encode())
        return digests, stored

    # --- restoring ----------------------------------------------------------------------------------------
    async def restore(self, snapshot_id: str, path: Path, size_gb: int) -> None:
        await asyncio.to_thread(self._restore, snapshot_id, path, size_gb)

    def _restore(self, snapshot_id: str, path: Path, size_gb: int) -> None:
        s3 = self._s3()
        answer = s3.get_object(Bucket=self.bucket, Key=self.manifest_key(snapshot_id))
        if answer.get("ContentLength", 0) > MAX_MANIFEST:
            raise SnapshotError(f"the manifest of {snapshot_id} is too large")
        manifest = json.loads(answer["Body"].read())
        chunk_size, prefix, digests = manifest["chunk_size"], manifest["chunk_prefix"], manifest["chunks"]
        if chunk_size != CHUNK or not _PREFIX.match(prefix) or not all(d == "" or _DIGEST.match(d) for d in digests):
            raise SnapshotError(f"the manifest of {snapshot_id} is not one this store wrote")
        if len(digests) * chunk_size > size_gb * GIB:
            raise SnapshotError(f"{snapshot_id} lists more chunks than {size_gb} GiB hold")
        if manifest["size_gb"] > size_gb:
            raise SnapshotError(f"{snapshot_id} holds {manifest['size_gb']} GiB, more than {size_gb}")

        def fetch(index: int, digest: str) -> tuple[int, bytes]:
            body = s3.get_object(Bucket=self.bucket, Key=f"{prefix}{digest}")["Body"].read(chunk_size + 1024)
            data = decode(body, chunk_size)
            if hashlib.sha256(data).hexdigest() != digest:
                raise SnapshotError(f"chunk {index} of {snapshot_id} does not match its digest")
            return index, data

        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as file:
            file.truncate(size_gb * GIB)
            fd = file.fileno()
            pending: list[Future[tuple[int, bytes]]] = []
            for index, digest in enumerate(digests):
                if not digest:
                    continue
                pending.append(self._pool.submit(fetch, index, digest))
                if len(pending) >= IN_FLIGHT:
                    at, data = pending.pop(0).result()
                    os.pwrite(fd, data, at * chunk_size)
            for future in pending:
                at, data = future.result()
                os.pwrite(fd, data, at * chunk_size)
            os.fsync(fd)

    # --- deleting -----------------------------------------------------------------------------------------
    async def delete(self, snapshot_id: str, unused: set[str]) -> None:
        """Remove the manifest, then the chunks no other snapshot uses (the caller holds `lock`)."""
        await asyncio.to_thread(self._delete, snapshot_id, unused)

    def _delete(self, snapshot_id: str, unused: set[str]) -> None:
        s3 = self._s3()
        s3.delete_object(Bucket=self.bucket, Key=self.manifest_key(snapshot_id))
        keys = [self.chunk_key(d) for d in sorted(unused) if d]
        for start in range(0, len(keys), 1000):
            s3.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys[start : start + 1000]], "Quiet": True}
            )

    async def remove_orphans(self, known: set[str]) -> int:
        """Remove this zone's chunks that no snapshot lists (left by a snapshot that failed half-way)."""
        return await asyncio.to_thread(self._remove_orphans, known)

    def _remove_orphans(self, known: set[str]) -> int:
        prefix = f"zones/{self.zone}/chunks/"
        s3 = self._s3()
        stray = []
        for page in s3.get_paginator("list_objects").paginate(Bucket=self.bucket, Prefix=prefix):
            stray += [i["Key"] for i in page.get("Contents", []) if i["Key"][len(prefix) :] not in known]
        for start in range(0, len(stray), 1000):
            s3.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in stray[start : start + 1000]], "Quiet": True}
            )
        return len(stray)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._pool.shutdown(wait=False, cancel_futures=True)


def _done(value: tuple[str, int]) -> Future[tuple[str, int]]:
    future: Future[tuple[str, int]] = Future()
    future.set_result(value)
    return future


def encode(data: bytes) -> bytes:
    """A chunk's object: b"Z" + zlib (level 1) when a 64 KiB sample of it compresses by 5 % or more, else b"R" +
    the bytes as they are (random or already compressed data: compressing it would only cost time, as qcow2 also
    stores such clusters as is)."""
    sample = data[:SAMPLE]
    if len(zlib.compress(sample, 1)) < 0.95 * len(sample):
        return b"Z" + zlib.compress(data, 1)
    return b"R" + data


def decode(body: bytes, limit: int) -> bytes:
    """The chunk's bytes (at most `limit`: a corrupt or hostile object cannot make us inflate more)."""
    kind, payload = body[:1], body[1:]
    if kind == b"R":
        return payload[:limit]
    if kind == b"Z":
        return zlib.decompressobj().decompress(payload, limit)
    raise SnapshotError("unknown chunk encoding")


def _hole(fd: int, offset: int) -> bool:
    """True when the chunk at `offset` is entirely a hole of the sparse file (nothing to read)."""
    try:
        data = os.lseek(fd, offset, os.SEEK_DATA)
    except OSError:  # ENXIO: no data at or after offset
        return True
    return data >= offset + CHUNK
