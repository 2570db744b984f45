"""BundleInstance on the node: snapshot an instance's root disk, bundle it, upload the parts to Walrus.

Who signs the manifest. Walrus accepts a manifest signed by the cloud's certificate or by a certificate of the
bucket owner's account. The node has neither key: the user's private key never leaves the user, and the cloud key
lives only with the CLC and Walrus. Three ways were open: (1) give nodes the cloud key, (2) let Walrus also trust
node certificates, (3) let the node make everything but the signature and have the CLC sign. (1) spreads the
one key that decrypts every image to every hypervisor host; (2) lets any compromised node mint manifests that
Walrus decrypts for anyone, i.e. the same exposure by another road. So (3): the node bundles (the heavy part,
next to the disk), uploads the parts with the user's own upload policy (Walrus checks it as any browser POST),
and reports the unsigned manifest; the CLC, which already holds the cloud key, checks it against the task it
started, signs it and uploads it with the same policy. A node can at worst report a wrong manifest for a bundle
its own user asked for, which it could do to the parts anyway.

States (written before the work they name): bundling (snapshot + bundle into INSTANCE_PATH/.bundles/<id>) ->
storing (uploading the parts) -> stored (manifest ready) | failed. A restart fails every task that was under way
and removes its directory: a half-made bundle is never resumed, and nothing is left behind.
The snapshot: the guest is paused while its root disk's overlay (or, without overlays, the disk) is copied, so
the copy is what a power cut would leave; the long work then runs on the copy with the guest running again.
Compression and encryption run in a worker thread (common/bundle/pipeline.py); uploads read parts in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import aiosqlite
from cryptography import x509

from common.bundle import manifest as mf
from common.bundle.errors import BundleError
from common.bundle.pipeline import bundle_parts
from common.bundle.upload_policy import UploadFailed, UploadPolicy, post_object
from common.messages.bundle_tasks import NodeBundleStatus, StartBundleRequest
from common.rpc import RpcError
from common.tasks import TaskSet
from services.node_controller import disks
from services.node_controller.hypervisor import HypervisorError
from services.node_controller.instances import InstanceManager

log = logging.getLogger("koala.nc.bundler")
UPLOAD_ATTEMPTS = 3


@dataclass
class Task:
    request: StartBundleRequest
    state: str
    progress: int = 0
    error: str = ""
    manifest: str = ""
    cancel: threading.Event = field(default_factory=threading.Event)

    def status(self) -> NodeBundleStatus:
        r = self.request
        return NodeBundleStatus(
            bundle_id=r.bundle_id,
            instance_id=r.instance_id,
            state=self.state,
            progress=self.progress,
            error=self.error,
            manifest=self.manifest,
        )


class Bundler:
    def __init__(self, db: aiosqlite.Connection, manager: InstanceManager, work_root: Path):
        self.db, self.manager, self.work_root = db, manager, work_root
        self.tasks: dict[str, Task] = {}
        self._running = TaskSet(log)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Fail what a previous run left under way, and remove every work directory (none is in use yet)."""
        now = time.time()
        await self.db.execute(
            "UPDATE bundle_tasks SET state = 'failed', error = 'the node restarted during the bundle', "
            "updated_at = ? WHERE state NOT IN ('stored', 'failed')",
            (now,),
        )
        await self.db.commit()
        async with self.db.execute("SELECT * FROM bundle_tasks") as cursor:
            for row in await cursor.fetchall():
                request = StartBundleRequest.model_validate_json(row["request"])
                self.tasks[row["bundle_id"]] = Task(
                    request, row["state"], row["progress"], row["error"], row["manifest"]
                )
        await asyncio.to_thread(shutil.rmtree, self.work_root, True)
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel.set()
        running = list(self._running)
        for job in running:
            job.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _save(self, task: Task, insert: bool = False) -> None:
        r = task.request
        if insert:
            await self.db.execute(
                "INSERT INTO bundle_tasks(bundle_id, instance_id, request, state, progress, error, manifest, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    r.bundle_id,
                    r.instance_id,
                    r.model_dump_json(),
                    task.state,
                    task.progress,
                    task.error,
                    "",
                    time.time(),
                ),
            )
        else:
            await self.db.execute(
                "UPDATE bundle_tasks SET state = ?, progress = ?, error = ?, manifest = ?, updated_at = ? "
                "WHERE bundle_id = ?",
                (task.state, task.progress, task.error, task.manifest, time.time(), r.bundle_id),
            )
        await self.db.commit()

    # --- operations ---------------------------------------------------------------------------------------
    async def begin(self, request: StartBundleRequest) -> NodeBundleStatus:
        known = self.tasks.get(request.bundle_id)
        if known is not None:  # the CLC retrying after a lost answer
            return known.status()
        inst = self.manager.instances.get(request.instance_id)
        if inst is None or inst.state != "Extant":
            state = inst.state if inst else "unknown here"
            raise RpcError(409, "IncorrectInstanceState", f"{request.instance_id} is {state}, not running")
        if self._root_disk(request.instance_id) is None:
            raise RpcError(409, "IncorrectInstanceState", f"{request.instance_id} has no instance-store root disk")
        task = Task(request, "bundling")
        await self._save(task, insert=True)  # written before any work
        self.tasks[request.bundle_id] = task
        self._running.spawn(self._work(task), f"bundle {request.bundle_id}")
        return task.status()

    def describe(self, bundle_id: str) -> NodeBundleStatus:
        task = self.tasks.get(bundle_id)
        if task is None:
            raise RpcError(404, "InvalidBundleID.NotFound", f"no bundle task {bundle_id} on this node")
        return task.status()

    async def cancel(self, bundle_id: str) -> NodeBundleStatus:
        task = self.tasks.get(bundle_id)
        if task is None:
            raise RpcError(404, "InvalidBundleID.NotFound", f"no bundle task {bundle_id} on this node")
        task.cancel.set()  # the worker notices within one chunk and fails the task
        return task.status()

    # --- the work -----------------------------------------------------------------------------------------
    def _root_disk(self, instance_id: str) -> tuple[Path, int | None] | None:
        inst = self.manager.instances.get(instance_id)
        if inst is None:
            return None
        directory = self.manager.instance_dir(inst.request)
        # The machine image's cached file (pins also hold the kernel and ramdisk, in the order they arrived).
        image_dir = self.manager.cache.image_dir(inst.request.image.id)
        image_size = next((p.stat().st_size for p in inst.pins if p.parent == image_dir and p.exists()), None)
        for name in ("root.qcow2", "root.img"):
            if (directory / name).exists():
                return directory / name, image_size
        return None

    async def _work(self, task: Task) -> None:
        request = task.request
        work = self.work_root / request.bundle_id  # the id matched BUNDLE_ID: a plain name
        try:
            await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
            image = await self._snapshot(task, work)
            manifest, parts = await asyncio.to_thread(self._bundle, task, image, work)
            task.state, task.progress = "storing", 0
            await self._save(task)
            await self._upload(task, parts)
            manifest.signature = ""
            task.manifest = mf.render(manifest).decode()
            task.state, task.progress = "stored", 100
            await self._save(task)
        except asyncio.CancelledError:
            raise
        except BundleError as err:
            await self._fail(task, "cancelled" if err.code == "Cancelled" else f"{err.code}: {err.message}")
        except (disks.DiskError, HypervisorError, UploadFailed, aiohttp.ClientError, OSError, RpcError) as err:
            await self._fail(task, str(err))
        except Exception as err:  # any failure ends the task as failed, never stuck
            log.exception("bundle %s", request.bundle_id)
            await self._fail(task, f"internal error: {type(err).__name__}")
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)

    async def _fail(self, task: Task, error: str) -> None:
        task.state, task.error = "failed", error[:500]
        await self._save(task)

    async def _snapshot(self, task: Task, work: Path) -> Path:
        """The root disk as a raw file named after the prefix (the manifest's image name), the size of the image
        the instance booted (the rest of the disk is the VM type's unused growth)."""
        found = self._root_disk(task.request.instance_id)
        if found is None:
            raise disks.DiskError(f"{task.request.instance_id} no longer has a root disk")
        disk, image_size = found
        copy = work / f"snapshot{disk.suffix}"
        name = task.request.instance_id
        await self.manager.hv.call(lambda conn: conn.lookupByName(name).suspend())
        try:
            await disks.run("cp", "--sparse=always", "--reflink=auto", str(disk), str(copy))
        finally:
            await self.manager.hv.call(lambda conn: conn.lookupByName(name).resume())
        image = work / task.request.prefix
        if disk.suffix == ".qcow2":  # the overlay's backing file is the immutable cached image
            await disks.run("qemu-img", "convert", "-O", "raw", str(copy), str(image))
            await asyncio.to_thread(copy.unlink)
        else:
            await asyncio.to_thread(copy.rename, image)
        if image_size is not None:
            await asyncio.to_thread(_truncate, image, image_size)
        return image

    def _bundle(self, task: Task, image: Path, work: Path) -> tuple[mf.Manifest, list[Path]]:
        request = task.request
        cloud_cert = x509.load_pem_x509_certificate(request.cloud_cert_pem.encode())
        total = max(1, image.stat().st_size)
        done = 0

        def progress(count: int) -> None:
            nonlocal done
            done += count
            task.progress = min(99, done * 100 // total)  # read by describe; written to the db at state changes

        manifest, parts = bundle_parts(
            image,
            work / "parts",
            user_cert=cloud_cert,  # no user key is at hand here: both wrapped keys are the cloud's (docstring)
            cloud_cert=cloud_cert,
            account=request.account_id,
            prefix=request.prefix,
            progress=progress,
            cancel=task.cancel,
        )
        image.unlink()
        return manifest, parts

    async def _upload(self, task: Task, parts: list[Path]) -> None:
        request = task.request
        assert self._session is not None
        policy = UploadPolicy(
            request.bucket, request.prefix, request.access_key_id, request.policy, request.signature, request.acl
        )
        for index, path in enumerate(parts):
            if task.cancel.is_set():
                raise BundleError("Cancelled", "the upload was stopped")
            data = await asyncio.to_thread(path.read_bytes)  # one part: 10 MiB
            for attempt in range(UPLOAD_ATTEMPTS):
                try:
                    await post_object(self._session, request.s3_url, policy, path.name, data)
                    break
                except UploadFailed as err:
                    if err.status < 500 or attempt == UPLOAD_ATTEMPTS - 1:
                        raise
                except aiohttp.ClientError:
                    if attempt == UPLOAD_ATTEMPTS - 1:
                        raise
                await asyncio.sleep(1.0 + attempt)
            task.progress = (index + 1) * 100 // len(parts)


def _truncate(path: Path, size: int) -> None:
    with path.open("r+b") as handle:
        handle.truncate(size)
