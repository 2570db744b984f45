"""Bundles through real processes: `koala upload-bundle` to Walrus, the CLC's identity interface for the signer,
ValidateImage / CacheImage / FlushImage as the CLC calls them, GetDecryptedImage as an NC calls it."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from cli.allinone import NODE_ID
from cli.main import main as koala
from common import pki
from common.bundle import manifest as mf
from common.decrypted_images import ImageFetchError, WalrusImages
from common.messages.walrus_images import (
    CacheImageRequest,
    CacheImageResponse,
    FlushImageRequest,
    FlushImageResponse,
    ValidateImageRequest,
    ValidateImageResponse,
)
from common.rpc import RpcClient, RpcError
from common.signing import Identity, TrustStore
from services.walrus.images.cache import entry_id
from tests.bundles.conftest import DATA, KEYS, REFERENCE, copy_reference, original_sha1s
from tests.bundles.test_format import XML_BOMB
from tests.harness import Cloud


class World:
    def __init__(self, cloud: Cloud, tmp: Path):
        self.cloud, self.tmp = cloud, tmp
        self.creds = cloud.admin_credentials()
        directory = pki.PkiDir(cloud.dir / "pki")
        trust = TrustStore(pki.load_cert(directory.ca_path))
        self.clc = RpcClient(Identity.from_files(directory.cert_path("clc"), directory.key_path("clc")), trust)
        self.nc = RpcClient(Identity.from_files(directory.cert_path(NODE_ID), directory.key_path(NODE_ID)), trust)
        self.url = cloud.url("walrus")
        self.cert_pem = Path(self.creds["EC2_CERT"]).read_text()
        self.user_key = pki.load_key(self.creds["EC2_PRIVATE_KEY"])
        self.cache_dir = cloud.dir / "data" / "walrus" / "image-cache"
        self.s3 = boto3.client(
            "s3",
            endpoint_url=self.creds["S3_URL"],
            aws_access_key_id=self.creds["EC2_ACCESS_KEY"],
            aws_secret_access_key=self.creds["EC2_SECRET_KEY"],
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
        )

    def s3_args(self) -> list[str]:
        return ["-a", self.creds["EC2_ACCESS_KEY"], "-s", self.creds["EC2_SECRET_KEY"], "-U", self.creds["S3_URL"]]

    def upload(self, manifest: Path, bucket: str) -> None:
        assert koala(["upload-bundle", "-b", bucket, "-m", str(manifest), *self.s3_args()]) == 0

    def bundle(self, image: Path, dest: Path, *extra: str) -> Path:
        args = ["bundle-image", "-i", str(image), "-d", str(dest), "-k", self.creds["EC2_PRIVATE_KEY"]]
        args += ["-c", self.creds["EC2_CERT"], "-u", self.creds["EC2_USER_ID"], "--part-size", "256K"]
        args += ["--ec2cert", self.creds["EUCALYPTUS_CERT"], *extra]
        assert koala(args) == 0
        return dest / f"{image.name}.manifest.xml"

    def call(self, op: str, message, response):
        return asyncio.run(_call(self.clc, self.url, op, message, response))

    def validate(self, bucket: str, key: str, certificates: list[str] | None = None) -> ValidateImageResponse:
        certs = [self.cert_pem] if certificates is None else certificates
        request = ValidateImageRequest(bucket=bucket, manifest_key=key, certificates=certs)
        return self.call("ValidateImage", request, ValidateImageResponse)

    def error_of(self, op: str, message, response) -> str:
        with pytest.raises(RpcError) as err:
            self.call(op, message, response)
        assert 400 <= err.value.status < 600 and err.value.status != 500
        return err.value.code

    def fetch(self, bucket: str, key: str, dest: Path) -> str:
        return asyncio.run(_fetch(self.nc, self.url, f"{bucket}/{key}", dest))

    def cached(self, bucket: str, key: str) -> bool:
        return (self.cache_dir / f"{entry_id(bucket, key)}.img").exists()


async def _call(client: RpcClient, url: str, op: str, message, response):
    try:
        return await client.call(url, op, message, response, timeout=60, expect_role="walrus")
    finally:
        await client.close()


async def _fetch(client: RpcClient, url: str, location: str, dest: Path) -> str:
    try:
        return (await WalrusImages(client, url, timeout=60).fetch(location, dest)).sha256
    finally:
        await client.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("walrus-images")
    cloud = Cloud(tmp / "cloud", roles=("clc", "walrus"), extra={"walrus": {"KOALA_WALRUS_IMAGE_CACHE_MB": 24}})
    # The cloud's key pair is the one the reference bundles were encrypted for.
    shutil.copyfile(KEYS / "cloud-cert.pem", cloud.dir / "pki" / pki.CLOUD_CERT_FILE)
    shutil.copyfile(KEYS / "cloud-pk.pem", cloud.dir / "pki" / pki.CLOUD_KEY_FILE)
    try:
        cloud.start()
        yield World(cloud, tmp)
    finally:
        cloud.stop()


def test_reference_bundles_decrypt_in_walrus(world: World) -> None:
    sha1s = original_sha1s()
    for folder, name in REFERENCE:
        bundle = copy_reference(folder, world.tmp / "ref")
        manifest = bundle / f"{name}.manifest.xml"
        # Amazon's parts and manifest text as they are; only the signature is the cloud admin's (a user of this cloud).
        parsed = mf.parse(manifest.read_bytes())
        raw = manifest.read_bytes()
        signature = mf.sign(mf.signed_region(raw), world.user_key)
        manifest.write_bytes(raw.replace(parsed.signature.encode(), signature.encode()))
        world.upload(manifest, "reference/amazon")
        key = f"amazon/{name}.manifest.xml"
        facts = world.validate("reference", key)
        assert facts.kind == ("kernel" if folder == "kernel" else "machine")
        assert (facts.signer, facts.owner_account_id) == ("user", world.creds["EC2_USER_ID"])
        cached = world.call(
            "CacheImage", CacheImageRequest(bucket="reference", manifest_key=key, wait=True), CacheImageResponse
        )
        assert cached.state == "cached"
        out = world.tmp / f"{name}.out"
        assert world.fetch("reference", key, out) == cached.image_sha256
        assert hashlib.sha1(out.read_bytes()).hexdigest() == sha1s[name]


def test_koala_bundle_round_trips_through_walrus_with_ranges(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    image = world.tmp / "disk.img"
    image.write_bytes(os.urandom(700_000) + b"walrus " * 100_000)
    manifest = world.bundle(image, world.tmp / "own", "--kernel", "eki-00000001")
    for name in ("EC2_ACCESS_KEY", "EC2_SECRET_KEY", "S3_URL"):  # credentials from the eucarc environment
        monkeypatch.setenv(name, world.creds[name])
    assert koala(["upload-bundle", "-b", "own.images/v1", "-m", str(manifest)]) == 0
    facts = world.validate("own.images", "v1/disk.img.manifest.xml")
    assert (facts.kind, facts.kernel_id, facts.size) == ("machine", "eki-00000001", image.stat().st_size)
    # The NC asks without any prior CacheImage: Walrus decrypts on demand (the signer is remembered).
    out = world.tmp / "disk.out"
    world.fetch("own.images", "v1/disk.img.manifest.xml", out)
    assert out.read_bytes() == image.read_bytes()
    # A resumed download: the byte range is part of the signed request.
    asyncio.run(_range_check(world, image.read_bytes()))
    # upload-bundle's default ACL is aws-exec-read: the owner and the cloud, nobody else.
    grants = world.s3.get_object_acl(Bucket="own.images", Key="v1/disk.img.manifest.xml")["Grants"]
    assert not any("AllUsers" in str(g["Grantee"]) or "AuthenticatedUsers" in str(g["Grantee"]) for g in grants)
    assert world.cached("own.images", "v1/disk.img.manifest.xml")
    # delete-bundle removes the manifest and every part; the cached image goes with them.
    assert koala(["delete-bundle", "-b", "own.images/v1", "-p", "disk.img", *world.s3_args()]) == 0
    assert world.s3.list_objects_v2(Bucket="own.images").get("KeyCount") == 0
    assert not world.cached("own.images", "v1/disk.img.manifest.xml")


async def _range_check(world: World, data: bytes) -> None:
    import aiohttp

    from common import signing
    from common.messages.walrus_images import GET_DECRYPTED_IMAGE_PATH, GetDecryptedImageRequest

    try:
        peer = await world.nc.peer(world.url, expect_role="walrus")
        body = GetDecryptedImageRequest(
            bucket="own.images", manifest_key="v1/disk.img.manifest.xml", start=1000, end=5000
        ).model_dump_json()
        headers = world.nc.identity.sign_headers("POST", GET_DECRYPTED_IMAGE_PATH, peer.id, body.encode())
        headers[signing.HEADER_CERT_PEM] = world.nc.identity.cert_der_b64
        async with aiohttp.ClientSession() as session:
            async with session.post(world.url + GET_DECRYPTED_IMAGE_PATH, data=body, headers=headers) as resp:
                assert resp.status == 206
                assert resp.headers["Content-Range"] == f"bytes 1000-4999/{len(data)}"
                assert await resp.read() == data[1000:5000]
            # Unsigned, or signed by a role other than nc or cc: refused with a JSON reason.
            async with session.post(world.url + GET_DECRYPTED_IMAGE_PATH, data=body) as resp:
                assert resp.status == 401 and (await resp.json())["code"] == "MissingSignature"
            clc_peer = await world.clc.peer(world.url, expect_role="walrus")
            headers = world.clc.identity.sign_headers("POST", GET_DECRYPTED_IMAGE_PATH, clc_peer.id, body.encode())
            headers[signing.HEADER_CERT_PEM] = world.clc.identity.cert_der_b64
            async with session.post(world.url + GET_DECRYPTED_IMAGE_PATH, data=body, headers=headers) as resp:
                assert resp.status == 403 and (await resp.json())["code"] == "RoleNotAllowed"
    finally:
        await world.nc.close()
        await world.clc.close()


def _small_bundle(world: World, name: str) -> Path:
    image = world.tmp / name
    image.write_bytes(os.urandom(300_000) + name.encode() * 50_000)
    return world.bundle(image, world.tmp / f"b-{name}")


def test_bad_bundles_get_a_clear_error_each_and_nothing_is_cached(world: World) -> None:
    bucket = "bad.bundles"

    def check(key: str, code: str, certificates: list[str] | None = None, nc_code: str = "") -> None:
        certs = [world.cert_pem] if certificates is None else certificates
        request = ValidateImageRequest(bucket=bucket, manifest_key=key, certificates=certs)
        assert world.error_of("ValidateImage", request, ValidateImageResponse) == code
        cache = CacheImageRequest(bucket=bucket, manifest_key=key, certificates=certs, wait=True)
        assert world.error_of("CacheImage", cache, CacheImageResponse) == code
        with pytest.raises(ImageFetchError) as err:
            world.fetch(bucket, key, world.tmp / "never.img")
        assert err.value.code == (nc_code or code)  # an NC names no certificates
        assert not world.cached(bucket, key)

    # Wrong cloud key: encrypted for another cloud.
    manifest = _small_bundle(world, "othercloud.img")
    other = world.bundle(world.tmp / "othercloud.img", world.tmp / "oc", "--ec2cert", str(KEYS / "user-cert.pem"))
    assert other.exists() and manifest.exists()
    world.upload(other, bucket)
    check("othercloud.img.manifest.xml", "CannotDecryptKey")
    # Signed by a certificate that is not of this cloud (the reference user), or verified with none known.
    world.upload(DATA / "small" / "small.img.manifest.xml", bucket)
    for part in (DATA / "small").glob("*.part.*"):
        world.s3.put_object(Bucket=bucket, Key=part.name, Body=part.read_bytes())
    foreign = [(KEYS / "user-cert.pem").read_text()]
    check("small.img.manifest.xml", "SignerNotBucketOwner", foreign, nc_code="SignatureMismatch")
    check("small.img.manifest.xml", "SignatureMismatch", [])
    # Tampered part, truncated part, missing part.
    manifest = _small_bundle(world, "parts.img")
    world.upload(manifest, bucket)
    part0 = manifest.parent / "parts.img.part.0"
    data = bytearray(part0.read_bytes())
    data[1000] ^= 0x55
    world.s3.put_object(Bucket=bucket, Key=part0.name, Body=bytes(data))
    check("parts.img.manifest.xml", "PartDigestMismatch")
    world.s3.put_object(Bucket=bucket, Key=part0.name, Body=part0.read_bytes()[:-32])
    check("parts.img.manifest.xml", "PartSizeMismatch")
    world.s3.delete_object(Bucket=bucket, Key=part0.name)
    check("parts.img.manifest.xml", "MissingPart")
    # Tampered manifest: a signed value changed.
    manifest = _small_bundle(world, "tamper.img")
    world.upload(manifest, bucket)
    raw = manifest.read_bytes().replace(b"<architecture>x86_64<", b"<architecture>i386<")
    world.s3.put_object(Bucket=bucket, Key=manifest.name, Body=raw)
    check(manifest.name, "SignatureMismatch")
    # Parts listed out of index order (properly signed).
    manifest = _small_bundle(world, "order.img")
    world.upload(manifest, bucket)
    parsed = mf.parse(manifest.read_bytes())
    parsed.parts.reverse()
    world.s3.put_object(Bucket=bucket, Key=manifest.name, Body=mf.sign_manifest(parsed, world.user_key))
    check(manifest.name, "PartsOutOfOrder")
    # An XML bomb, and a manifest that does not exist.
    world.s3.put_object(Bucket=bucket, Key="bomb.manifest.xml", Body=XML_BOMB)
    check("bomb.manifest.xml", "ForbiddenXml")
    check("nothing.manifest.xml", "NoSuchKey")
    assert not list(world.cache_dir.glob("tmp/*"))  # no leftovers of the failed decryptions


def test_invalidation_flush_and_one_decryption_for_twenty_nodes(world: World) -> None:
    bucket = "inval.bundles"
    manifest = _small_bundle(world, "inval.img")
    world.upload(manifest, bucket)
    key = manifest.name
    expected = (world.tmp / "inval.img").read_bytes()

    async def twenty() -> list[str]:
        try:
            return await asyncio.gather(
                *(WalrusImages(world.nc, world.url, timeout=60).fetch(f"{bucket}/{key}", world.tmp / f"n{i}.img")
                  for i in range(20))
            )  # fmt: skip
        finally:
            await world.nc.close()

    fetched = asyncio.run(twenty())
    assert len({f.sha256 for f in fetched}) == 1
    assert all((world.tmp / f"n{i}.img").read_bytes() == expected for i in range(20))
    assert world.cloud.log("walrus").count(f"cached image {bucket}/{key} ") == 1  # one decryption
    assert world.cached(bucket, key)
    # Overwriting a part (even with the same bytes) drops the cached image.
    part = manifest.parent / "inval.img.part.1"
    world.s3.put_object(Bucket=bucket, Key=part.name, Body=part.read_bytes())
    assert not world.cached(bucket, key)
    world.fetch(bucket, key, world.tmp / "again.img")
    assert world.cached(bucket, key)
    # FlushImage (deregistration) drops it too.
    flush = FlushImageRequest(bucket=bucket, manifest_key=key)
    assert world.call("FlushImage", flush, FlushImageResponse).flushed is True
    assert not world.cached(bucket, key)
    assert world.call("FlushImage", flush, FlushImageResponse).flushed is False
    # Deleting the manifest drops the image, and the image is gone for NCs.
    world.fetch(bucket, key, world.tmp / "again.img")
    world.s3.delete_object(Bucket=bucket, Key=key)
    assert not world.cached(bucket, key)
    with pytest.raises(ImageFetchError) as err:
        world.fetch(bucket, key, world.tmp / "gone.img")
    assert err.value.code == "NoSuchKey"


def test_a_crash_while_caching_leaves_no_half_image(world: World) -> None:
    """SIGKILL Walrus while it decrypts; after the restart the image is either absent or whole, never half."""
    bucket = "crash.bundles"
    image = world.tmp / "crash.img"
    image.write_bytes(os.urandom(6 << 20) + b"crash " * (3 << 20))
    manifest = world.bundle(image, world.tmp / "b-crash")
    world.upload(manifest, bucket)
    key = manifest.name
    start = CacheImageRequest(bucket=bucket, manifest_key=key, certificates=[world.cert_pem], wait=False)
    assert world.call("CacheImage", start, CacheImageResponse).state == "caching"
    world.cloud.kill("walrus")  # mid-decryption (or just after: both must be safe)
    world.cloud.start("walrus")
    assert not list((world.cache_dir / "tmp").iterdir())
    for leftover in world.cache_dir.glob("*.img"):  # whatever survived is complete and recorded
        assert leftover.with_suffix(".json").exists()
    out = world.tmp / "crash.out"
    world.fetch(bucket, key, out)
    assert out.read_bytes() == image.read_bytes()
