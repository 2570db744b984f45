"""Bundles stored in Walrus: manifest validation and the decrypting producer for the image cache.

Validation, in order, each failure with its own code (see common/messages/walrus_images.py): the bucket and
manifest exist; the manifest parses (defusedxml, size-limited); it is signed, over its raw bytes, by the cloud's
certificate or by a certificate of the bucket owner's account (confirmed with the CLC's ResolveCertificate);
the key is encrypted for this cloud; every part exists and the sizes add up; optionally every part's SHA-1.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from common.bundle import keys
from common.bundle import manifest as mf
from common.bundle.errors import BundleError
from common.bundle.pipeline import READ_BLOCK, check_part_sizes, decrypt_bundle
from common.messages.identity import ResolveCertificateResponse
from services.walrus.images.cache import Flight, Produced
from services.walrus.storage import NoSuchBucket, NoSuchKey, ObjectInfo, StorageBackend

log = logging.getLogger("koala.walrus.images")

CertificateResolver = Callable[[str], Awaitable[ResolveCertificateResponse]]
MAX_REMEMBERED_PER_ACCOUNT = 16
LOOP_TIMEOUT = 60.0  # a worker thread never waits forever for the event loop (e.g. while Walrus stops)


@dataclass
class ValidBundle:
    bucket: str
    manifest_key: str
    raw: bytes
    manifest: mf.Manifest
    sha256: str
    owner_account_id: str
    signer: str  # "user" or "cloud"
    signer_account_id: str
    parts: list[ObjectInfo]

    @property
    def part_keys(self) -> list[str]:
        return [info.key for info in self.parts]


def part_key(manifest_key: str, filename: str) -> str:
    """Parts live next to the manifest, under the same key prefix (Eucalyptus's prefix bug, fixed)."""
    prefix, _, _ = manifest_key.rpartition("/")
    return f"{prefix}/{filename}" if prefix else filename


class RememberedSigners:
    """Certificates confirmed for an account before, so the image can be re-made after eviction or restart
    without the CLC sending them again. A small JSON file, bounded per account."""

    def __init__(self, path: Path):
        self.path = path
        try:
            data = json.loads(path.read_text())
            self.by_account: dict[str, list[str]] = {str(k): [str(p) for p in v] for k, v in data.items()}
        except (OSError, ValueError, AttributeError):
            self.by_account = {}

    def get(self, account_id: str) -> list[str]:
        return list(self.by_account.get(account_id, []))

    def remember(self, account_id: str, pem: str) -> None:
        known = self.by_account.setdefault(account_id, [])
        if pem in known:
            return
        known.insert(0, pem)
        del known[MAX_REMEMBERED_PER_ACCOUNT:]
        temp = self.path.with_suffix(".tmp")
        temp.write_text(json.dumps(self.by_account))
        os.replace(temp, self.path)


class StoredParts:
    """A bundle's parts in Walrus's object store, read from a worker thread (the decrypt pipeline).

    Each part is opened on the event loop (the storage API is async); its bytes are then read with pread from
    the backend's data files, or pulled chunk by chunk from the async reader when the backend offers no files.
    """

    def __init__(self, storage: StorageBackend, loop: asyncio.AbstractEventLoop, bundle: ValidBundle):
        self.storage, self.loop, self.bundle = storage, loop, bundle
        self.infos = {info.key: info for info in bundle.parts}

    def _info(self, part: mf.Part) -> ObjectInfo:
        return self.infos[part_key(self.bundle.manifest_key, part.filename)]

    def size(self, part: mf.Part) -> int | None:
        return self._info(part).size

    def open(self, part: mf.Part) -> BinaryIO:
        info = self._info(part)

        async def opener() -> tuple[Any, list[tuple[Any, int, int]] | None]:
            reader = await self.storage.open_object(self.bundle.bucket, info.key)
            return reader, reader.file_ranges(0, reader.info.size)

        try:
            reader, ranges = asyncio.run_coroutine_threadsafe(opener(), self.loop).result(LOOP_TIMEOUT)
        except (NoSuchKey, NoSuchBucket):
            raise BundleError("ImageChanged", f"part {info.key} was deleted during decryption", 409) from None
        if reader.info.etag != info.etag or reader.info.size != info.size:
            asyncio.run_coroutine_threadsafe(reader.close(), self.loop).result(LOOP_TIMEOUT)
            raise BundleError("ImageChanged", f"part {info.key} was overwritten during decryption", 409)
        return _PartStream(self.loop, reader, ranges)  # type: ignore[return-value]


class _PartStream:
    def __init__(self, loop: asyncio.AbstractEventLoop, reader: Any, ranges: list[tuple[Any, int, int]] | None):
        self.loop, self.reader, self.ranges = loop, reader, list(ranges or [])
        self.iterator = None if ranges is not None else reader.iter_range(0, reader.info.size, READ_BLOCK)
        self.pending = b""

    def read(self, n: int) -> bytes:
        if self.iterator is None:
            while self.ranges:
                handle, offset, count = self.ranges[0]
                if count == 0:
                    self.ranges.pop(0)
                    continue
                data = os.pread(handle.fileno(), min(n, count), offset)
                if not data:
                    raise BundleError("PartSizeMismatch", f"{self.reader.info.key} is shorter than recorded")
                self.ranges[0] = (handle, offset + len(data), count - len(data))
                return data
            return b""
        if not self.pending:
            try:
                self.pending = asyncio.run_coroutine_threadsafe(_next(self.iterator), self.loop).result(LOOP_TIMEOUT)
            except StopAsyncIteration:
                return b""
        data, self.pending = self.pending[:n], self.pending[n:]
        return data

    def __enter__(self) -> _PartStream:
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.reader.close(), self.loop).result(LOOP_TIMEOUT)


async def _next(iterator: Any) -> bytes:
    chunk: bytes = await iterator.__anext__()
    return chunk


class BundleValidator:
    def __init__(
        self,
        storage: StorageBackend,
        cloud_cert: x509.Certificate,
        cloud_key: rsa.RSAPrivateKey,
        resolve: CertificateResolver,
        signers: RememberedSigners,
    ):
        self.storage, self.cloud_cert, self.cloud_key = storage, cloud_cert, cloud_key
        self.resolve, self.signers = resolve, signers

    async def validate(
        self, bucket: str, manifest_key: str, certificates: list[str], check_part_digests: bool
    ) -> ValidBundle:
        bucket_info = await self.storage.get_bucket(bucket)
        if bucket_info is None:
            raise BundleError("NoSuchBucket", f"bucket {bucket} does not exist", 404)
        raw = await self._read_manifest(bucket, manifest_key)
        manifest = await asyncio.to_thread(mf.parse, raw)
        owner = bucket_info.owner_id
        signer, signer_account = await self._check_signer(raw, manifest, owner, certificates)
        await asyncio.to_thread(keys.unwrap, manifest.ec2_encrypted_key, self.cloud_key, "key")
        await asyncio.to_thread(keys.unwrap, manifest.ec2_encrypted_iv, self.cloud_key, "IV")
        infos = []
        for part in manifest.parts:
            info = await self.storage.head_object(bucket, part_key(manifest_key, part.filename))
            if info is None:
                raise BundleError("MissingPart", f"part {part.index} ({part.filename}) is missing", 404)
            infos.append(info)
        bundle = ValidBundle(
            bucket, manifest_key, raw, manifest, mf.manifest_sha256(raw), owner, signer, signer_account, infos
        )
        parts = StoredParts(self.storage, asyncio.get_running_loop(), bundle)
        check_part_sizes(manifest, parts)
        if check_part_digests:
            await asyncio.to_thread(_check_digests, manifest, parts)
        return bundle

    async def _read_manifest(self, bucket: str, key: str) -> bytes:
        try:
            async with await self.storage.open_object(bucket, key) as reader:
                if reader.info.size > mf.MAX_MANIFEST_BYTES:
                    limit = mf.MAX_MANIFEST_BYTES
                    raise BundleError("ManifestTooLarge", f"manifest is {reader.info.size} bytes; the limit is {limit}")
                return b"".join([chunk async for chunk in reader.iter_range(0, reader.info.size)])
        except NoSuchBucket:
            raise BundleError("NoSuchBucket", f"bucket {bucket} does not exist", 404) from None
        except NoSuchKey:
            raise BundleError("NoSuchKey", f"manifest {key} does not exist in {bucket}", 404) from None

    async def _check_signer(
        self, raw: bytes, manifest: mf.Manifest, owner: str, certificates: list[str]
    ) -> tuple[str, str]:
        if not manifest.signature or manifest.signature.upper() == mf.UNSIGNED:
            raise BundleError("UnsignedManifest", "the manifest is not signed", 403)
        if mf.signature_valid(raw, manifest.signature, self.cloud_cert):
            return "cloud", owner
        foreign = inactive = None
        for pem in dict.fromkeys([*certificates, *self.signers.get(owner)]):
            try:
                cert = x509.load_pem_x509_certificate(pem.encode())
            except ValueError:
                continue
            if not mf.signature_valid(raw, manifest.signature, cert):
                continue
            answer = await self.resolve(pem)
            if not answer.found or answer.principal is None:
                foreign = foreign or "the signing certificate is not a certificate of any account here"
                continue
            if answer.principal.account_id != owner:
                foreign = f"the manifest is signed by account {answer.principal.account_id}, not the bucket owner"
                continue
            if not answer.active or not answer.principal.enabled:
                inactive = "the signing certificate or its user is disabled"
                continue
            await asyncio.to_thread(self.signers.remember, owner, pem)
            return "user", owner
        if inactive:
            raise BundleError("SignerInactive", inactive, 403)
        if foreign:
            raise BundleError("SignerNotBucketOwner", foreign, 403)
        raise BundleError(
            "SignatureMismatch",
            "the manifest's signature does not verify with the cloud's certificate or any certificate known for "
            "the bucket owner's account (altered manifest, or register it with the signer's certificate)",
            403,
        )

    async def producer(
        self, certificates: list[str], temp: Path, flight: Flight, reserve: Callable[[int], Awaitable[None]]
    ) -> Produced:
        """Validate, then decrypt into `temp` in one streaming pass (the image cache's producer)."""
        bundle = await self.validate(flight.bucket, flight.manifest_key, certificates, check_part_digests=False)
        flight.keys.update([flight.manifest_key, *bundle.part_keys])
        await reserve(bundle.manifest.size)
        parts = StoredParts(self.storage, asyncio.get_running_loop(), bundle)

        def run() -> Produced:
            with temp.open("wb") as out:
                result = decrypt_bundle(bundle.manifest, self.cloud_key, parts, out, cancel=flight.cancel)
            return Produced(bundle.part_keys, bundle.sha256, result.size, result.sha256)

        return await asyncio.to_thread(run)


def _check_digests(manifest: mf.Manifest, parts: StoredParts) -> None:
    for part in manifest.parts:
        digest = hashlib.sha1()
        with parts.open(part) as stream:
            while block := stream.read(READ_BLOCK):
                digest.update(block)
        if digest.hexdigest() != part.digest:
            raise BundleError(
                "PartDigestMismatch", f"part {part.index} ({part.filename}) does not match its SHA-1 digest"
            )
