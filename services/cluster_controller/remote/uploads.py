"""A remote zone's images: the admin's map (KOALA_REMOTE_IMAGE_MAP), and with KOALA_REMOTE_AUTO_UPLOAD the local
bundles re-made for the remote cloud on demand.

Why the CC and not the CLC: the remote's secrets (access key, the remote account's signing key) live only on the
CC host, and the uploads are this zone's alone (another remote zone may point at another cloud).

An upload of a local image, written to remote.db before each step (model.Upload):
1. `uploading`, naming the remote bucket (`<prefix>-<local id>`, this zone's alone) before anything is made;
   the decrypted image comes from this cloud's Walrus (GetDecryptedImage, signed as the CC), is bundled again
   with common.bundle (key wrapped for KOALA_REMOTE_CLOUD_CERT, manifest signed with the remote account's
   key), and its parts then its manifest are put in the bucket (common.bundle.upload, boto3);
2. `registering`: RegisterImage, unless the remote already has an image of that manifest (a crash between
   the two);
3. `ready`, with the remote id: the mapping every later launch uses.
A crash resumes at start: a bundle made before the crash (its manifest is written last) is uploaded again as it
is (same keys), otherwise the bucket is emptied and the image bundled again. A refusal (`failed`) deletes the
bucket; it is remembered for REFUSAL_MEMORY so launches meanwhile are refused at once with the reason. At start,
buckets and images with this zone's prefix that no upload names are deleted. Launches of one image share one
upload; kernel and ramdisk images are uploaded with the machine image that needs them.

A local image deregistered (the CLC's ForgetImages, or its KnownImages answer at start and every RECHECK_EVERY
seconds not naming it) has its upload written `deleting` before anything is done remotely; then the remote image
is deregistered, the bucket emptied and deleted, and the upload forgotten. A crash in between resumes at start.
The remote copy is registered with the local image's architecture.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import time
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from common.backoff import Backoff
from common.bundle import keys
from common.bundle import manifest as manifest_mod
from common.bundle import upload as s3_upload
from common.bundle.errors import BundleError
from common.bundle.pipeline import bundle_image
from common.config import ConfigError
from common.decrypted_images import ImageFetchError, WalrusImages
from common.messages.cc_nc import ImageRef, LaunchSpec
from common.messages.clc_cc import ImageIdsRequest, ImageIdsResponse
from common.rpc import PeerUnreachable, RpcClient, RpcError
from common.tasks import TaskSet
from services.cluster_controller.config import ClusterControllerConfig
from services.cluster_controller.remote.credentials import RemoteCredentials, read_private
from services.cluster_controller.remote.ec2 import Ec2Client, RemoteError, RemoteRefused, RemoteUnavailable
from services.cluster_controller.remote.model import Upload
from services.cluster_controller.remote.store import RemoteStore

log = logging.getLogger("koala.cc.remote")
REFUSAL_MEMORY = 60.0  # seconds a refused upload is not tried again (launches meanwhile are refused at once)
RECHECK_EVERY = 300.0  # seconds between asking the CLC which uploaded images are still registered
_LOCAL_ID = re.compile(r"^[a-z]{3}-[0-9a-f]{8,17}$")  # as the image map's: safe as a file name
# Walrus errors that another attempt may cure; any other (NoSuchKey, a bad bundle) is the image's own.
_FETCH_TRANSIENT = frozenset({"WalrusUnreachable", "BadResponse", "ImageChanged", "ImageSizeMismatch", "NotReady"})


class Identity:
    """What re-bundling for the remote needs: its cloud certificate, the remote account's certificate and key."""

    def __init__(self, cloud_cert: x509.Certificate, cert: x509.Certificate, key: rsa.RSAPrivateKey, account: str):
        self.cloud_cert, self.cert, self.key, self.account = cloud_cert, cert, key, account


def load_identity(config: ClusterControllerConfig, account: str) -> Identity:
    """The files named by the KOALA_REMOTE_* upload settings, or ConfigError saying what is missing or wrong."""
    needed = {
        "KOALA_REMOTE_S3_ENDPOINT": config.KOALA_REMOTE_S3_ENDPOINT,
        "KOALA_REMOTE_CLOUD_CERT": config.KOALA_REMOTE_CLOUD_CERT,
        "KOALA_REMOTE_SIGNING_CERT": config.KOALA_REMOTE_SIGNING_CERT,
        "KOALA_REMOTE_SIGNING_KEY": config.KOALA_REMOTE_SIGNING_KEY,
        "KOALA_WALRUS_URL": config.KOALA_WALRUS_URL,
    }
    missing = [name for name, value in needed.items() if not value]
    if missing:
        raise ConfigError(f"KOALA_REMOTE_AUTO_UPLOAD needs {', '.join(missing)}")
    assert config.KOALA_REMOTE_CLOUD_CERT and config.KOALA_REMOTE_SIGNING_CERT and config.KOALA_REMOTE_SIGNING_KEY
    try:
        cloud_cert = keys.load_certificate(config.KOALA_REMOTE_CLOUD_CERT)
    except BundleError as err:
        raise ConfigError(f"KOALA_REMOTE_CLOUD_CERT: {err.message}") from None
    try:
        cert = keys.load_certificate(config.KOALA_REMOTE_SIGNING_CERT)
    except BundleError as err:
        raise ConfigError(f"KOALA_REMOTE_SIGNING_CERT: {err.message}") from None
    raw = read_private(config.KOALA_REMOTE_SIGNING_KEY, "KOALA_REMOTE_SIGNING_KEY")
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"KOALA_REMOTE_SIGNING_KEY: {config.KOALA_REMOTE_SIGNING_KEY} is not a PEM key") from None
    if not isinstance(key, rsa.RSAPrivateKey) or not keys.key_matches_cert(key, cert):
        raise ConfigError("KOALA_REMOTE_SIGNING_KEY: not the RSA key of KOALA_REMOTE_SIGNING_CERT")
    if not isinstance(cloud_cert.public_key(), rsa.RSAPublicKey):
        raise ConfigError("KOALA_REMOTE_CLOUD_CERT: bundle keys are wrapped with RSA; this certificate is not")
    return Identity(cloud_cert, cert, key, account or "000000000000")


def s3_client(config: ClusterControllerConfig, secret: RemoteCredentials) -> Any:
    """boto3's S3 client for the remote's Walrus (botocore's signer, as the EC2 calls). Slow to build: a thread."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=config.KOALA_REMOTE_S3_ENDPOINT,
        region_name=config.KOALA_REMOTE_REGION,
        aws_access_key_id=secret.access_key,
        aws_secret_access_key=secret.secret_key,
        config=Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            connect_timeout=min(config.KOALA_REMOTE_TIMEOUT, 10.0),
            read_timeout=config.KOALA_REMOTE_TIMEOUT,
            retries={"max_attempts": 2, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=8,
        ),
    )


def clear_bucket(s3: Any, bucket: str, delete: bool) -> None:
    """Delete every object of `bucket` (and the bucket itself if `delete`); a bucket that is not there is fine."""
    from botocore.exceptions import ClientError

    try:
        while keys_left := [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, MaxKeys=1000).get("Contents") or []]:
            s3_upload.delete_keys(s3, bucket, keys_left)
        if delete:
            s3.delete_bucket(Bucket=bucket)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") not in ("NoSuchBucket", "404"):
            raise


class RemoteImages:
    def __init__(
        self,
        config: ClusterControllerConfig,
        ec2: Ec2Client,
        store: RemoteStore,
        prefix: str,
        client: RpcClient,
        secret: RemoteCredentials,
    ):
        self.config, self.ec2, self.store, self.prefix, self.secret = config, ec2, store, prefix, secret
        self.client = client
        self.zone = config.KOALA_ZONE
        self.static = config.image_map()
        self.enabled = config.KOALA_REMOTE_AUTO_UPLOAD
        self.problem = ""  # why uploads cannot be made: a launch that needs one is refused with it
        self.identity: Identity | None = None
        self.s3: Any = None
        self.walrus = WalrusImages(client, config.KOALA_WALRUS_URL)
        self.work = config.KOALA_STATE_DIR / "remote-images"
        self.uploads: dict[str, Upload] = {}
        self._running: dict[str, asyncio.Task[str]] = {}
        self._removing: set[str] = set()
        self._tasks = TaskSet(log, expected=(RemoteError,))
        self.made = 0  # uploads finished by this process (logs, tests)

    # --- lifecycle ------------------------------------------------------------------------------------
    async def open(self) -> None:
        """Load the uploads and, with auto-upload, the identity files and the S3 client. A bad configuration is
        kept as `problem` (said at each launch that needs an upload), so the mapped images keep working."""
        for upload in await self.store.load_uploads():
            self.uploads[upload.local_id] = upload
        if not self.enabled:
            return
        try:
            self.identity = await asyncio.to_thread(load_identity, self.config, self.secret.account_id)
            self.s3 = await asyncio.to_thread(s3_client, self.config, self.secret)
        except ConfigError as err:
            self.problem = str(err)
            log.warning("zone %s cannot upload images to the remote cloud: %s", self.zone, self.problem)

    async def check(self) -> None:
        """At start: the remote's S3 refusing the credentials is a problem said at launch; no answer is only
        logged (each upload tries again)."""
        if self.s3 is None:
            return
        try:
            await self._s3(lambda s3: s3.list_buckets())
        except RemoteRefused as err:
            self.problem = f"{self.config.KOALA_REMOTE_S3_ENDPOINT} refused the credentials ({err.code})"
            log.warning("zone %s cannot upload images to the remote cloud: %s", self.zone, self.problem)
        except RemoteUnavailable as err:
            log.warning("the remote's S3 %s does not answer at start: %s", self.config.KOALA_REMOTE_S3_ENDPOINT, err)

    def start(self) -> None:
        """Finish the uploads a crash interrupted and delete what no upload accounts for (in the background)."""
        if self.s3 is None or self.problem:
            return  # nothing can be done remotely until the configuration is mended (and the CC restarted)
        for upload in list(self.uploads.values()):
            if upload.state == "deleting":
                log.info("removal of %s from the remote cloud: resuming", upload.local_id)
                self._start_removal(upload)
            elif upload.state in ("uploading", "registering"):
                log.info("upload of %s to the remote cloud: resuming (%s)", upload.local_id, upload.state)
                ref = ImageRef(id=upload.local_id, manifest=upload.manifest, architecture=upload.architecture)
                self._start_upload(ref, upload.kind)
        self._tasks.spawn(self._reconcile(), "remote images reconcile")
        self._tasks.spawn(self._recheck_loop(), "remote images recheck")

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- launches -------------------------------------------------------------------------------------
    def refusal(self, spec: LaunchSpec) -> str:
        """Why a launch cannot get its images into the remote cloud now ('' if it can), said at once."""
        if spec.image.id in self.static:
            return ""
        for ref in (spec.image, spec.kernel, spec.ramdisk):
            if ref is None or ref.id in self.static:
                continue
            upload = self.uploads.get(ref.id)
            if upload is not None and upload.state == "ready":
                continue
            if upload is not None and upload.state == "deleting":
                return f"InvalidAMIID.NotFound: image {ref.id} is deregistered"
            if not self.enabled:
                if ref is not spec.image:
                    continue  # kernel and ramdisk: the remote image's own apply
                return (
                    f"InvalidAMIID.NotFound: image {ref.id} has no entry in KOALA_REMOTE_IMAGE_MAP of zone "
                    f"{self.zone} (and KOALA_REMOTE_AUTO_UPLOAD is off)"
                )
            if self.problem:
                return (
                    f"InvalidAMIID.Unavailable: image {ref.id} has no remote copy and zone {self.zone} cannot "
                    f"upload it: {self.problem}"
                )
            if (
                upload is not None
                and upload.state == "failed"
                and time.monotonic() - upload.failed_at < REFUSAL_MEMORY
                and ref.id not in self._running
            ):
                return f"InvalidAMIID.Unavailable: the remote cloud of zone {self.zone} refused image {ref.id}: " + (
                    upload.reason
                )
        return ""

    async def launch_params(self, spec: LaunchSpec) -> dict[str, str]:
        """ImageId (and KernelId, RamdiskId when the image is uploaded) for the remote RunInstances, uploading
        what is missing. RemoteRefused / RemoteUnavailable as the EC2 calls."""
        if spec.image.id in self.static:
            return {"ImageId": self.static[spec.image.id]}  # the remote image's own kernel and ramdisk apply
        wanted = [("ImageId", spec.image, "machine")]
        if spec.kernel is not None:
            wanted.append(("KernelId", spec.kernel, "kernel"))
        if spec.ramdisk is not None:
            wanted.append(("RamdiskId", spec.ramdisk, "ramdisk"))
        ids = await asyncio.gather(*(self.remote_id(ref, kind) for _, ref, kind in wanted))
        return {name: remote for (name, _, _), remote in zip(wanted, ids, strict=True)}

    async def remote_id(self, ref: ImageRef, kind: str) -> str:
        if ref.id in self.static:
            return self.static[ref.id]
        upload = self.uploads.get(ref.id)
        if upload is not None and upload.state == "ready":
            return upload.remote_id
        if upload is not None and upload.state == "deleting":
            raise RemoteRefused("InvalidAMIID.NotFound", f"image {ref.id} is deregistered")
        if not self.enabled:
            raise RemoteRefused("InvalidAMIID.NotFound", f"image {ref.id} has no entry in KOALA_REMOTE_IMAGE_MAP")
        if self.problem:
            raise RemoteRefused("InvalidAMIID.Unavailable", self.problem)
        task = self._running.get(ref.id) or self._start_upload(ref, kind)
        return await asyncio.shield(task)  # a launch that gives up does not stop the upload others share

    async def lost(self, params: dict[str, str]) -> None:
        """The remote refused a launch for want of one of these images: the uploads that made them are made again
        by the next launch (into the same bucket, emptied first)."""
        for upload in self.uploads.values():
            if upload.state == "ready" and upload.remote_id in params.values():
                log.warning(
                    "%s: the remote cloud lost its copy %s; it is uploaded again", upload.local_id, upload.remote_id
                )
                upload.state, upload.remote_id = "uploading", ""
                await self.store.save_upload(upload)

    def _start_upload(self, ref: ImageRef, kind: str) -> asyncio.Task[str]:
        task: asyncio.Task[str] = self._tasks.spawn(self._make(ref, kind), f"upload {ref.id}")
        self._running[ref.id] = task
        task.add_done_callback(lambda _: self._running.pop(ref.id, None))
        return task

    # --- one upload -------------------------------------------------------------------------------------
    def bucket_of(self, local_id: str) -> str:
        return f"{self.prefix}-{local_id}"

    def location_of(self, upload: Upload) -> str:
        return f"{upload.bucket}/{upload.local_id}.manifest.xml"

    async def _make(self, ref: ImageRef, kind: str) -> str:
        if not _LOCAL_ID.match(ref.id):
            raise RemoteRefused("InvalidAMIID.Malformed", f"{ref.id[:40]!r} is not an image id")
        upload = self.uploads.get(ref.id)
        if upload is None or upload.state == "failed":
            upload = Upload(
                local_id=ref.id,
                kind=kind,
                manifest=ref.manifest,
                bucket=self.bucket_of(ref.id),
                architecture=ref.architecture,
            )
            await self.store.save_upload(upload)  # the bucket is named before anything is made remotely
            self.uploads[ref.id] = upload
        try:
            if upload.state == "uploading":
                started = time.monotonic()
                await self._upload(upload)
                self._still_wanted(upload)
                upload.state = "registering"
                await self.store.save_upload(upload)
                log.info("%s: uploaded to %s in %.1f s", upload.local_id, upload.bucket, time.monotonic() - started)
            if upload.state == "registering":
                remote_id = await self._register(upload)
                upload.remote_id = remote_id
                self._still_wanted(upload)
                upload.state = "ready"
                await self.store.save_upload(upload)
                self.made += 1
                log.info("%s: registered in the remote cloud as %s", upload.local_id, remote_id)
        except RemoteRefused as err:
            if upload.state != "deleting":  # deregistered meanwhile: the removal deletes what was made
                await self._fail(upload, err)
            raise
        await asyncio.to_thread(shutil.rmtree, self.work / upload.local_id, True)
        return upload.remote_id

    @staticmethod
    def _still_wanted(upload: Upload) -> None:
        if upload.state == "deleting":
            raise RemoteRefused("InvalidAMIID.NotFound", f"image {upload.local_id} was deregistered meanwhile")

    async def _upload(self, upload: Upload) -> None:
        identity = self.identity
        assert identity is not None
        work = self.work / upload.local_id
        bundle_dir = work / "bundle"
        manifest_path = bundle_dir / f"{upload.local_id}.manifest.xml"
        if not await asyncio.to_thread(manifest_path.exists):
            # A new bundle: whatever an interrupted one left in the bucket goes first (other keys, other key).
            await self._s3(clear_bucket, upload.bucket, False)
            await asyncio.to_thread(shutil.rmtree, work, True)
            await asyncio.to_thread(work.mkdir, parents=True)
            image = work / upload.local_id
            try:
                await self.walrus.fetch(upload.manifest, image, self.config.KOALA_REMOTE_UPLOAD_MAX_MB << 20)
            except ImageFetchError as err:
                kind = RemoteUnavailable if err.code in _FETCH_TRANSIENT else RemoteRefused
                raise kind(err.code, f"this cloud's Walrus: {err.message}") from None
            try:
                await asyncio.to_thread(
                    bundle_image,
                    image,
                    bundle_dir,
                    user_key=identity.key,
                    user_cert=identity.cert,
                    cloud_cert=identity.cloud_cert,
                    account=identity.account,
                    prefix=upload.local_id,
                    kernel_id="true" if upload.kind == "kernel" else None,
                    ramdisk_id="true" if upload.kind == "ramdisk" else None,
                    architecture=upload.architecture or "x86_64",
                )
            except BundleError as err:
                raise RemoteRefused(err.code, f"re-bundling: {err.message}") from None
            await asyncio.to_thread(image.unlink)
        raw = await asyncio.to_thread(manifest_path.read_bytes)
        parts = [bundle_dir / part.filename for part in manifest_mod.parse(raw).parts]
        await self._s3(s3_upload.ensure_bucket, upload.bucket)
        await self._s3(s3_upload.upload_bundle, upload.bucket, "", manifest_path, parts)

    async def _register(self, upload: Upload) -> str:
        location = self.location_of(upload)
        answer = await self.ec2.call(
            "DescribeImages", {"Owners": ["self"], "Filters": [{"Name": "manifest-location", "Values": [location]}]}
        )
        for image in answer.get("Images") or []:
            if image.get("ImageLocation") == location and image.get("ImageId"):
                return str(image["ImageId"])  # registered before a crash
        answer = await self.ec2.call(
            "RegisterImage",
            {
                "ImageLocation": location,
                "Name": f"{self.prefix}-{upload.local_id}",
                "Description": self.zone,
                "Architecture": upload.architecture or "x86_64",
            },
        )
        remote_id = answer.get("ImageId")
        if not remote_id:
            raise RemoteUnavailable("BadAnswer", "RegisterImage answered without an image id")
        return str(remote_id)

    async def _fail(self, upload: Upload, err: RemoteError) -> None:
        upload.state, upload.reason = "failed", f"{err.code}: {err.message}"[:500]
        upload.failed_at = time.monotonic()
        await self.store.save_upload(upload)
        log.warning("upload of %s to the remote cloud refused: %s", upload.local_id, upload.reason)
        with contextlib.suppress(RemoteError):  # if the remote does not answer, the start-up reconcile does it
            await self._s3(clear_bucket, upload.bucket, True)
        await asyncio.to_thread(shutil.rmtree, self.work / upload.local_id, True)

    async def _s3(self, action: Callable[..., Any], *args: Any) -> Any:
        """One S3 step in a thread, its failure as the EC2 calls': refused (4xx) or unavailable."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await asyncio.to_thread(action, self.s3, *args)
        except BundleError as err:
            kind = RemoteRefused if s3_upload.refused(err.status) else RemoteUnavailable
            raise kind(err.code, f"the remote's S3: {err.message}", err.status) from None
        except ClientError as err:
            status = s3_upload.status_of(err)
            code = err.response.get("Error", {}).get("Code") or f"HTTP{status}"
            kind = RemoteRefused if s3_upload.refused(status) else RemoteUnavailable
            raise kind(code, f"the remote's S3: {err}", status) from None
        except (BotoCoreError, OSError) as err:
            raise RemoteUnavailable("Unreachable", f"the remote's S3: {err}") from None

    # --- reconciliation ---------------------------------------------------------------------------------
    async def _reconcile(self) -> None:
        """Once after start, until the remote answers: delete the buckets of refused uploads, and every bucket
        and image with this zone's prefix that no upload names (made by a lost database, or an older one)."""
        backoff = Backoff(initial=1.0, maximum=self.config.KOALA_REMOTE_POLL_MAX)
        while True:
            try:
                await self._reconcile_once()
                return
            except RemoteError as err:
                log.warning("remote images reconcile: %s (trying again)", err)
                await asyncio.sleep(backoff.next_delay())

    async def _reconcile_once(self) -> None:
        for upload in [u for u in self.uploads.values() if u.state == "failed" and u.local_id not in self._running]:
            await self._s3(clear_bucket, upload.bucket, True)
            if self.uploads.get(upload.local_id) is upload and upload.state == "failed":
                await self.store.forget_upload(upload.local_id)
                del self.uploads[upload.local_id]
        ours = self.prefix + "-"
        known = {u.bucket for u in self.uploads.values()}
        answer = await self._s3(lambda s3: s3.list_buckets())
        for bucket in [b.get("Name", "") for b in answer.get("Buckets") or []]:
            if bucket.startswith(ours) and bucket not in known and bucket not in self._buckets_running():
                log.warning("remote bucket %s belongs to no upload: deleting it", bucket)
                await self._s3(clear_bucket, bucket, True)
        answer = await self.ec2.call("DescribeImages", {"Owners": ["self"]})
        for image in answer.get("Images") or []:
            bucket = str(image.get("ImageLocation") or "").partition("/")[0]
            if bucket.startswith(ours) and bucket not in {u.bucket for u in self.uploads.values()}:
                log.warning("remote image %s (%s) belongs to no upload: deregistering it", image["ImageId"], bucket)
                await self.ec2.call("DeregisterImage", {"ImageId": image["ImageId"]})

    def _buckets_running(self) -> set[str]:
        return {self.bucket_of(local_id) for local_id in self._running}

    # --- local images deregistered ------------------------------------------------------------------------
    async def forget(self, local_ids: list[str]) -> None:
        """These local images are deregistered: their remote copies go. Written before anything is done remotely;
        the removal runs in the background until the remote has done it."""
        chosen = [self.uploads[i] for i in dict.fromkeys(local_ids) if i in self.uploads]
        chosen = [u for u in chosen if u.state != "deleting"]
        for upload in chosen:
            upload.state = "deleting"
            await self.store.save_upload(upload)
        if self.s3 is None:
            return  # nothing can be done remotely until the configuration is mended (and the CC restarted)
        for upload in chosen:
            self._start_removal(upload)

    def _start_removal(self, upload: Upload) -> None:
        if upload.local_id not in self._removing:
            self._removing.add(upload.local_id)
            task = self._tasks.spawn(self._remove(upload), f"remove {upload.local_id}")
            task.add_done_callback(lambda _: self._removing.discard(upload.local_id))

    async def _remove(self, upload: Upload) -> None:
        running = self._running.get(upload.local_id)
        if running is not None:  # an upload in progress stops at its next step
            with contextlib.suppress(Exception):
                await running
        backoff = Backoff(initial=1.0, maximum=self.config.KOALA_REMOTE_POLL_MAX)
        while True:
            try:
                await self._remove_once(upload)
                break
            except RemoteError as err:
                log.warning("removing the remote copy of %s: %s (trying again)", upload.local_id, err)
                await asyncio.sleep(backoff.next_delay())
        await self.store.forget_upload(upload.local_id)
        if self.uploads.get(upload.local_id) is upload:
            del self.uploads[upload.local_id]
        await asyncio.to_thread(shutil.rmtree, self.work / upload.local_id, True)
        log.info("%s: deregistered here, its remote copy removed", upload.local_id)

    async def _remove_once(self, upload: Upload) -> None:
        """Deregister the remote image (the recorded one, and any registered from the bucket before a crash let
        us record it), then delete the bucket."""
        location = self.location_of(upload)
        answer = await self.ec2.call(
            "DescribeImages", {"Owners": ["self"], "Filters": [{"Name": "manifest-location", "Values": [location]}]}
        )
        found = {str(i["ImageId"]) for i in answer.get("Images") or [] if i.get("ImageLocation") == location}
        for remote_id in sorted(found | ({upload.remote_id} if upload.remote_id else set())):
            try:
                await self.ec2.call("DeregisterImage", {"ImageId": remote_id})
            except RemoteRefused as err:
                if "NotFound" not in err.code:
                    raise
        await self._s3(clear_bucket, upload.bucket, True)

    async def _recheck_loop(self) -> None:
        """At start and every RECHECK_EVERY seconds: the uploads of images the CLC no longer has are removed (a
        ForgetImages this CC missed while it was down, or that the CLC never sent)."""
        if not self.config.KOALA_CLC_URL:
            return
        while True:
            delay = RECHECK_EVERY
            kept = [u.local_id for u in self.uploads.values() if u.state != "deleting"]
            if kept:
                try:
                    answer = await self.client.call(
                        self.config.KOALA_CLC_URL,
                        "KnownImages",
                        ImageIdsRequest(image_ids=kept),
                        ImageIdsResponse,
                        expect_role="clc",
                        timeout=10.0,
                    )
                except (RpcError, PeerUnreachable) as err:
                    log.warning("cannot ask the CLC which uploaded images are still registered: %s", err)
                    delay = 10.0
                else:
                    gone = sorted(set(kept) - set(answer.image_ids))
                    if gone:
                        log.info("images deregistered while this CC did not hear of it: %s", gone)
                        await self.forget(gone)
            await asyncio.sleep(delay)
