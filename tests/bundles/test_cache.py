"""The decrypted-image cache as a component, fed by real decryptions of bundles in directories."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import pytest

from common.bundle import manifest as mf
from common.bundle.errors import BundleError
from common.bundle.pipeline import DirectoryParts, bundle_image, decrypt_bundle
from services.walrus.images.cache import ImageCache, Produced, entry_id
from tests.bundles.conftest import copy_reference

MIB = 1 << 20


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, ref_keys) -> dict[str, Path]:
    """Five 1 MiB images, each bundled into its own directory (name -> directory)."""
    root = tmp_path_factory.mktemp("bundles")
    made = {}
    for name in "abcde":
        image = root / f"{name}.img"
        image.write_bytes(os.urandom(MIB // 2) + name.encode() * (MIB // 2))
        bundle_image(
            image,
            root / name,
            user_key=ref_keys.user_key,
            user_cert=ref_keys.user_cert,
            cloud_cert=ref_keys.cloud_cert,
            account="123456789012",
            part_size=256 << 10,
        )
        made[name] = root / name
    return made


class DirProducer:
    """Decrypts the bundle in a directory; counts runs; can be held at a gate to pile up requesters."""

    def __init__(self, folder: Path, manifest_name: str, cloud_key: object, gate: asyncio.Event | None = None):
        self.folder, self.manifest_name, self.cloud_key, self.gate = folder, manifest_name, cloud_key, gate
        self.runs = 0
        self.reached = asyncio.Event()  # the producer has declared its keys and waits at the gate

    async def __call__(self, temp: Path, flight, reserve) -> Produced:
        self.runs += 1
        raw = (self.folder / self.manifest_name).read_bytes()
        manifest = mf.parse(raw)
        flight.keys.update(p.filename for p in manifest.parts)
        await reserve(manifest.size)
        self.reached.set()
        if self.gate is not None:
            await self.gate.wait()

        def run() -> Produced:
            with temp.open("wb") as out:
                result = decrypt_bundle(manifest, self.cloud_key, DirectoryParts(self.folder), out)  # type: ignore[arg-type]
            return Produced([p.filename for p in manifest.parts], mf.manifest_sha256(raw), result.size, result.sha256)

        return await asyncio.to_thread(run)


def producer(bundles: dict[str, Path], name: str, ref_keys, gate: asyncio.Event | None = None) -> DirProducer:
    return DirProducer(bundles[name], f"{name}.img.manifest.xml", ref_keys.cloud_key, gate)


def files(cache: ImageCache) -> set[str]:
    return {p.name for p in cache.dir.iterdir() if p.is_file()}


async def test_lru_eviction_order_and_size_cap(tmp_path: Path, bundles, ref_keys) -> None:
    cache = ImageCache(tmp_path / "cache", 3 * MIB)
    cache.load()
    for name in "abc":
        entry = await cache.get("bkt", f"{name}.img.manifest.xml", producer(bundles, name, ref_keys))
        assert entry is not None and entry.size == MIB
        data = cache.path(entry).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry.image_sha256
    # Use a, then b: c is now the least recently used.
    for name in "ab":
        assert await cache.get("bkt", f"{name}.img.manifest.xml", producer(bundles, name, ref_keys)) is not None
    await cache.get("bkt", "d.img.manifest.xml", producer(bundles, "d", ref_keys))
    assert [e.manifest_key[0] for e in cache.entries.values()] == ["a", "b", "d"]
    assert cache.used <= 3 * MIB
    assert f"{entry_id('bkt', 'c.img.manifest.xml')}.img" not in files(cache)
    await cache.get("bkt", "a.img.manifest.xml", producer(bundles, "a", ref_keys))  # a: most recent again
    await cache.get("bkt", "e.img.manifest.xml", producer(bundles, "e", ref_keys))
    assert [e.manifest_key[0] for e in cache.entries.values()] == ["d", "a", "e"]
    assert len([f for f in files(cache) if f.endswith(".img")]) == 3
    # The order survives a restart (last use is persisted).
    again = ImageCache(tmp_path / "cache", 3 * MIB)
    again.load()
    assert [e.manifest_key[0] for e in again.entries.values()] == ["d", "a", "e"]
    # An image larger than the whole cache is refused up front.
    small = ImageCache(tmp_path / "tiny", MIB // 2)
    small.load()
    with pytest.raises(BundleError) as err:
        await small.get("bkt", "a.img.manifest.xml", producer(bundles, "a", ref_keys))
    assert err.value.code == "ImageTooLargeForCache"
    assert not small.entries and not list((tmp_path / "tiny" / "tmp").iterdir())


async def test_twenty_concurrent_requesters_share_one_decryption(tmp_path: Path, bundles, ref_keys) -> None:
    cache = ImageCache(tmp_path / "cache", 10 * MIB)
    cache.load()
    gate = asyncio.Event()
    make = producer(bundles, "a", ref_keys, gate)
    waiters = [asyncio.create_task(cache.get("bkt", "a.img.manifest.xml", make)) for _ in range(20)]
    await make.reached.wait()
    for _ in range(3):
        await asyncio.sleep(0)  # let every requester reach the flight
    assert len(cache.flights) == 1
    gate.set()
    entries = await asyncio.gather(*waiters)
    assert make.runs == 1 and cache.decryptions == 1
    assert len({id(e) for e in entries}) == 1
    assert hashlib.sha256(cache.path(entries[0]).read_bytes()).hexdigest() == entries[0].image_sha256


async def test_a_failed_decryption_reaches_every_waiter_and_is_not_cached(tmp_path: Path, bundles, ref_keys) -> None:
    folder = copy_reference("multipart", tmp_path)
    part = folder / "multipart.img.part.1"
    data = bytearray(part.read_bytes())
    data[100] ^= 1
    part.write_bytes(bytes(data))
    cache = ImageCache(tmp_path / "cache", 20 * MIB)
    cache.load()
    gate = asyncio.Event()
    make = DirProducer(folder, "multipart.img.manifest.xml", ref_keys.cloud_key, gate)
    waiters = [asyncio.create_task(cache.get("bkt", "multipart.img.manifest.xml", make)) for _ in range(20)]
    await asyncio.sleep(0.05)
    gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, BundleError) and r.code == "PartDigestMismatch" for r in results)
    assert make.runs == 1
    assert not cache.entries and not cache.flights
    assert files(cache) == set() and not list(cache.tmp.iterdir())
    # The next request tries again (failures are not cached) and still fails cleanly.
    with pytest.raises(BundleError):
        await cache.get("bkt", "multipart.img.manifest.xml", make)
    assert make.runs == 2


async def test_invalidation_on_overwrite_delete_and_flush(tmp_path: Path, bundles, ref_keys) -> None:
    cache = ImageCache(tmp_path / "cache", 10 * MIB)
    cache.load()
    for name in "abc":
        await cache.get("bkt", f"{name}.img.manifest.xml", producer(bundles, name, ref_keys))
    a = cache.lookup("bkt", "a.img.manifest.xml")
    assert a is not None
    assert cache.invalidate("bkt", a.part_keys[1]) == 1  # a part of a changed
    assert cache.lookup("bkt", "a.img.manifest.xml") is None
    assert cache.invalidate("other", "b.img.manifest.xml") == 0  # another bucket's object: no effect
    assert cache.invalidate("bkt", "b.img.manifest.xml") == 1  # b's manifest changed
    assert cache.flush("bkt", "c.img.manifest.xml") is True
    assert cache.flush("bkt", "c.img.manifest.xml") is False
    assert not cache.entries and files(cache) == set()
    # A change while the image is being decrypted spoils that decryption: nothing is cached.
    gate = asyncio.Event()
    make = producer(bundles, "d", ref_keys, gate)
    waiter = asyncio.create_task(cache.get("bkt", "d.img.manifest.xml", make))
    await make.reached.wait()
    cache.invalidate("bkt", "d.img.part.0")
    gate.set()
    with pytest.raises(BundleError) as err:
        await waiter
    assert err.value.code == "ImageChanged"
    assert not cache.entries and files(cache) == set()
    # Asked again, it is made afresh.
    assert await cache.get("bkt", "d.img.manifest.xml", producer(bundles, "d", ref_keys)) is not None


async def test_crash_leftovers_are_never_taken_as_images(tmp_path: Path, bundles, ref_keys) -> None:
    cache = ImageCache(tmp_path / "cache", 10 * MIB)
    cache.load()
    good = await cache.get("bkt", "a.img.manifest.xml", producer(bundles, "a", ref_keys))
    assert good is not None
    # A crash mid-decryption leaves a partial file in tmp/; one between the image rename and its JSON leaves an
    # image without metadata; a torn image has the wrong size for its metadata.
    (cache.tmp / f"{entry_id('bkt', 'x')}.123.part").write_bytes(b"half an image")
    orphan = cache.dir / f"{entry_id('bkt', 'y')}.img"
    orphan.write_bytes(b"no metadata")
    b = await cache.get("bkt", "b.img.manifest.xml", producer(bundles, "b", ref_keys))
    assert b is not None
    with cache.path(b).open("r+b") as handle:
        handle.truncate(1000)
    (cache.dir / f"{entry_id('bkt', 'z')}.json").write_text("{not json")
    (cache.dir / "signers.json").write_text("{}")  # not a cache entry: left alone
    restarted = ImageCache(tmp_path / "cache", 10 * MIB)
    restarted.load()
    assert list(restarted.entries) == [good.id]
    assert files(restarted) == {f"{good.id}.img", f"{good.id}.json", "signers.json"}
    assert not list(restarted.tmp.iterdir())
    assert json.loads((restarted.dir / f"{good.id}.json").read_text())["size"] == MIB


def test_byte_ranges_for_resumed_downloads() -> None:
    from common.messages.walrus_images import GetDecryptedImageRequest
    from common.rpc import RpcError
    from services.walrus.images.component import _range

    def ask(start=None, end=None, header=None, total=1000):
        return _range(GetDecryptedImageRequest(bucket="b", manifest_key="k", start=start, end=end), header, total)

    assert ask() == (0, 1000)
    assert ask(start=600) == (600, 1000)
    assert ask(start=10, end=20) == (10, 20)
    assert ask(start=0, end=0) == (0, 0)  # a zero-byte probe: the signed headers still tell the image's digest
    assert ask(header="bytes=100-199") == (100, 200)
    assert ask(header="bytes=900-") == (900, 1000)
    assert ask(header="bytes=-100") == (900, 1000)
    assert ask(start=5, header="bytes=100-199") == (5, 1000)  # the signed body wins over the header
    for bad in ({"start": 1001}, {"start": 1000}, {"start": 50, "end": 10}, {"header": "bytes=a-b"}):
        with pytest.raises(RpcError) as err:
            ask(**bad)
        assert err.value.status == 416
