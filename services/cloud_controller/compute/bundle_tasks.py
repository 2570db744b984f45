"""BundleInstance tasks on the CLC: EC2's states, each written before the step it names, and the manifest.

pending (written, the node not asked yet) -> bundling (the node snapshots and bundles) -> storing (the node
uploads the parts; then this CLC signs the node's manifest with the cloud key and uploads it with the user's
policy) -> complete; failed on any failure; cancelling while a CancelBundleTask reaches the node.
Why the CLC signs: services/node_controller/bundler.py. A driver coroutine per unfinished task follows the node
(DescribeBundleTask through the instance's CC); a CLC restart starts the drivers again from the stored state,
and a node restart fails the node's side, so every task ends complete or failed. A node that stays unreachable
for NODE_PATIENCE seconds fails the task too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from common.bundle import manifest as mf
from common.bundle.errors import BundleError
from common.bundle.upload_policy import UploadFailed, UploadPolicy, post_object
from common.ids import new_id
from common.messages.bundle_tasks import BundleTaskRequest, NodeBundleStatus, StartBundleRequest
from common.rpc import PeerUnreachable, RpcError
from common.tasks import TaskSet
from services.cloud_controller.compute.cc_client import ClusterClient
from services.cloud_controller.compute.errors import ComputeError
from services.cloud_controller.database import Database

log = logging.getLogger("koala.clc.bundles")
FINAL = {"complete", "failed"}
POLL_SECONDS = 1.0
NODE_PATIENCE = 600.0


@dataclass
class BundleTask:
    bundle_id: str
    owner_id: str
    instance_id: str
    zone: str
    state: str
    progress: int
    start_time: float
    update_time: float
    storage: dict[str, str]
    error_code: str = ""
    error_message: str = ""

    @property
    def policy(self) -> UploadPolicy:
        s = self.storage
        return UploadPolicy(s["bucket"], s["prefix"], s["access_key_id"], s["policy"], s["signature"], s["acl"])


class BundleTasks:
    def __init__(
        self,
        db: Database,
        cc: ClusterClient,
        cloud_key_path: Path,
        cloud_cert_pem: str,
        s3_url: str,
    ):
        self.db, self.cc = db, cc
        self.cloud_key_path, self.cloud_cert_pem, self.s3_url = cloud_key_path, cloud_cert_pem, s3_url
        self.tasks: dict[str, BundleTask] = {}
        self._drivers = TaskSet(log)
        self._session: aiohttp.ClientSession | None = None
        self._cloud_key: rsa.RSAPrivateKey | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        for row in await self.db.fetchall("SELECT * FROM bundle_tasks"):
            task = BundleTask(**{**dict(row), "storage": json.loads(row["storage"])})
            self.tasks[task.bundle_id] = task
            if task.state not in FINAL:
                self._drivers.spawn(self._drive(task), f"bundle {task.bundle_id}")

    async def stop(self) -> None:
        drivers = list(self._drivers)
        for driver in drivers:
            driver.cancel()
        await asyncio.gather(*drivers, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _save(self, task: BundleTask, insert: bool = False) -> None:
        task.update_time = time.time()
        if insert:
            await self.db.execute(
                "INSERT INTO bundle_tasks(bundle_id, owner_id, instance_id, zone, state, progress, start_time, "
                "update_time, storage, error_code, error_message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    task.bundle_id,
                    task.owner_id,
                    task.instance_id,
                    task.zone,
                    task.state,
                    task.progress,
                    task.start_time,
                    task.update_time,
                    json.dumps(task.storage),
                    task.error_code,
                    task.error_message,
                ),
            )
        else:
            await self.db.execute(
                "UPDATE bundle_tasks SET state = ?, progress = ?, update_time = ?, error_code = ?, error_message = ? "
                "WHERE bundle_id = ?",
                (task.state, task.progress, task.update_time, task.error_code, task.error_message, task.bundle_id),
            )

    # --- operations ---------------------------------------------------------------------------------------
    async def create(self, owner_id: str, instance_id: str, zone: str, policy: UploadPolicy) -> BundleTask:
        now = time.time()
        storage = {
            "bucket": policy.bucket,
            "prefix": policy.prefix,
            "access_key_id": policy.access_key_id,
            "policy": policy.policy,
            "signature": policy.signature,
            "acl": policy.acl,
        }
        task = BundleTask(new_id("bun"), owner_id, instance_id, zone, "pending", 0, now, now, storage)
        await self._save(task, insert=True)  # written before the node is asked
        self.tasks[task.bundle_id] = task
        self._drivers.spawn(self._drive(task), f"bundle {task.bundle_id}")
        return task

    def visible(self, owner_id: str, is_admin: bool = False) -> list[BundleTask]:
        return [t for t in self.tasks.values() if t.owner_id == owner_id or is_admin]

    def get(self, bundle_id: str, owner_id: str) -> BundleTask:
        task = self.tasks.get(bundle_id.lower())
        if task is None or task.owner_id != owner_id:
            raise ComputeError("InvalidBundleID.NotFound", f"The bundle task '{bundle_id}' does not exist")
        return task

    def active_for(self, instance_id: str) -> BundleTask | None:
        for task in self.tasks.values():
            if task.instance_id == instance_id and task.state not in FINAL:
                return task
        return None

    async def cancel(self, task: BundleTask) -> BundleTask:
        """Final tasks are answered as they are (a cancel that lost the race to completion changes nothing)."""
        if task.state in FINAL or task.state == "cancelling":
            return task
        task.state = "cancelling"
        await self._save(task)  # written first: the driver tells the node and fails the task once it has stopped
        return task

    # --- the driver ---------------------------------------------------------------------------------------
    async def _node(self, op: str, task: BundleTask, message: Any = None) -> NodeBundleStatus:
        message = message or BundleTaskRequest(bundle_id=task.bundle_id, instance_id=task.instance_id)
        return await self.cc.bundle_task(task.zone, op, message)

    def _start_request(self, task: BundleTask) -> StartBundleRequest:
        s = task.storage
        return StartBundleRequest(
            bundle_id=task.bundle_id,
            instance_id=task.instance_id,
            bucket=s["bucket"],
            prefix=s["prefix"],
            access_key_id=s["access_key_id"],
            policy=s["policy"],
            signature=s["signature"],
            acl=s["acl"],
            account_id=task.owner_id,
            cloud_cert_pem=self.cloud_cert_pem,
            s3_url=self.s3_url,
        )

    async def _drive(self, task: BundleTask) -> None:
        try:
            await self._follow(task)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # a task ends failed, never stuck
            log.exception("bundle %s", task.bundle_id)
            await self._fail(task, "InternalError", f"{type(err).__name__}")

    async def _follow(self, task: BundleTask) -> None:
        unreachable_since: float | None = None
        while task.state not in FINAL:
            try:
                if task.state == "pending":
                    status = await self._node("BundleInstance", task, self._start_request(task))
                elif task.state == "cancelling":  # repeated until the node says failed (or stored: too late)
                    status = await self._node("CancelBundleTask", task)
                else:
                    status = await self._node("DescribeBundleTask", task)
                unreachable_since = None
            except RpcError as err:
                if err.status < 500:  # the node refused or no longer knows the task
                    code = "Client.Cancelled" if task.state == "cancelling" else "Server.InternalError"
                    await self._fail(task, code, err.message)
                    return
                unreachable_since = unreachable_since or time.monotonic()
            except PeerUnreachable:
                unreachable_since = unreachable_since or time.monotonic()
            else:
                if await self._apply(task, status):
                    return
            if unreachable_since is not None and time.monotonic() - unreachable_since > NODE_PATIENCE:
                await self._fail(task, "Server.InternalError", "the instance's node stopped answering")
                return
            await asyncio.sleep(POLL_SECONDS)

    async def _apply(self, task: BundleTask, status: NodeBundleStatus) -> bool:
        """Follow the node's state; True when the task is final."""
        if status.state == "failed":
            cancelled = status.error == "cancelled"
            await self._fail(
                task,
                "Client.Cancelled" if cancelled else "Server.InternalError",
                "The bundle task was cancelled" if cancelled else status.error,
            )
            return True
        if task.state == "cancelling":
            if status.state != "stored":  # the node stops within a chunk; wait for it to say failed
                return False
        elif status.state in ("bundling", "storing"):
            if (task.state, task.progress) != (status.state, status.progress):
                task.state, task.progress = status.state, status.progress
                await self._save(task)
            return False
        if status.state == "stored":  # parts uploaded: a cancel that came too late loses the race
            task.state, task.progress = "storing", 100
            await self._save(task)
            try:
                await self._store_manifest(task, status.manifest.encode())
            except (BundleError, UploadFailed, aiohttp.ClientError, OSError) as err:
                await self._fail(task, "Server.InternalError", f"storing the manifest failed: {err}")
                return True
            task.state = "complete"
            await self._save(task)
            return True
        return False

    async def _store_manifest(self, task: BundleTask, raw: bytes) -> None:
        """Sign the node's manifest with the cloud key, after checking it describes this task's bundle."""
        prefix = task.storage["prefix"]
        manifest = await asyncio.to_thread(mf.parse, raw)
        if manifest.name != prefix or manifest.user != task.owner_id:
            raise BundleError("ManifestMismatch", "the node's manifest does not describe this task's bundle")
        for part in manifest.parts:
            if part.filename != f"{prefix}.part.{part.filename.rsplit('.', 1)[-1]}":
                raise BundleError("ManifestMismatch", f"part {part.filename} is not under the task's prefix")
        key = await self._key()
        signed = await asyncio.to_thread(mf.sign_manifest, manifest, key)
        assert self._session is not None
        await post_object(self._session, self.s3_url, task.policy, f"{prefix}.manifest.xml", signed)

    async def _key(self) -> rsa.RSAPrivateKey:
        if self._cloud_key is None:
            pem = await asyncio.to_thread(self.cloud_key_path.read_bytes)
            key = serialization.load_pem_private_key(pem, password=None)
            assert isinstance(key, rsa.RSAPrivateKey)
            self._cloud_key = key
        return self._cloud_key

    async def _fail(self, task: BundleTask, code: str, message: str) -> None:
        task.state, task.error_code, task.error_message = "failed", code, message[:500]
        await self._save(task)
