"""The instance lifecycle: Pending (staging: images, disks; booting) -> Extant (running) -> Teardown.

Every transition is written to the database before it is acted on: the record exists before staging starts,
says `booting` before the domain is created, and says Teardown before the domain is destroyed, so a crash at
any point leaves a state the next start finishes or undoes (see `adopt`). libvirt lifecycle events drive the
states (started -> Extant, stopped/crashed -> Teardown); a periodic sweep compares libvirt's domains with the
records as a safety net (missed events, lost connections, boot timeouts, teardowns to retry, records to forget).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shutil
import time
import uuid
from collections.abc import Collection, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite
import libvirt

from common.backoff import Backoff
from common.decrypted_images import ImageFetchError
from common.ids import is_id
from common.messages.cc_nc import InstanceInfo, NcState, RunInstanceRequest
from common.rpc import RpcError
from common.tasks import TaskSet
from services.node_controller import configdrive, console, disks
from services.node_controller.cache import ImageCache
from services.node_controller.config import NodeControllerConfig
from services.node_controller.domain import DiskSpec, DomainSpec, render
from services.node_controller.hypervisor import DomainInfo, Hypervisor, HypervisorError
from services.node_controller.notifier import Notifier
from services.node_controller.rbd_disks import RbdSetupError, check_target, node_auth
from services.node_controller.records import InstanceRecords

log = logging.getLogger("koala.nc.instances")
_SAFE_OWNER = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_LOOKS_OURS = re.compile(r"^i-[0-9a-fA-F]{8}$")
EXTANT_DETAILS = {"running", "blocked", "paused", "shutdown"}
# Suspended to disk (libvirt save to the instance directory): Extant with no domain; its cores and memory are free.
SUSPENDED, SUSPENDING, RESUMING = "suspended", "suspending", "resuming"
SAVE_FILE = "suspended.save"
# A live migration in progress (migration.py): on the source Extant/migrating, on the target Pending/migrating-in.
# Events and the sweep leave such instances to the migration, whose record says what to do after a restart.
MIGRATING_OUT, MIGRATING_IN = "migrating", "migrating-in"
# The Teardown detail of a run that left this node while its directory, on storage shared with the node it went to
# (or came from), is in use there: its files are never removed from here (migration.py).
LEFT_SHARED = "left-shared"
MIGRATING = (MIGRATING_OUT, MIGRATING_IN)
CREATE_ATTEMPTS = 5
REBOOT_GRACE = 10.0
NAME_HELD_GRACE = 30.0  # how long a new run waits for an ended run's domain of the same name to go
MISSING_GRACE = 3.0


@dataclass
class Instance:
    request: RunInstanceRequest
    state: NcState
    detail: str
    launch_time: float
    updated_at: float
    reason: str = ""
    teardown_at: float | None = None
    pins: list[Path] = field(default_factory=list)
    task: asyncio.Task[Any] | None = None
    reboot_until: float = 0.0
    restarted: asyncio.Event | None = None  # set by libvirt's reboot event while a RebootInstance waits for it
    files_removed: bool = False
    missing_since: float = 0.0  # when the sweep first found no domain (its event may still be on the way)
    request_json: str | None = None  # the request as stored (it never changes once accepted)
    # While a teardown destroys the domain: what the CC is shown meanwhile (the state before it), and the event set
    # once the domain is gone. The end is recorded first (a crash finishes it) but reported only after, since the
    # CC may start the instance again elsewhere as soon as it hears, and its volumes must not be open twice.
    shown: tuple[NcState, str] | None = None
    destroyed: asyncio.Event | None = None

    @property
    def id(self) -> str:
        return self.request.instance_id

    def info(self) -> InstanceInfo:
        r = self.request
        state, detail = self.shown or (self.state, self.detail)
        return InstanceInfo(
            instance_id=r.instance_id,
            reservation_id=r.reservation_id,
            owner_id=r.owner_id,
            image_id=r.image.id,
            kernel_id=r.kernel.id if r.kernel else "",
            ramdisk_id=r.ramdisk.id if r.ramdisk else "",
            vm_type=r.vm_type,
            key_name=r.key_name,
            launch_index=r.launch_index,
            group_names=r.group_names,
            net=r.net,
            state=state,
            detail=detail,
            reason=self.reason,
            launch_time=self.launch_time,
            updated_at=self.updated_at,
        )


@dataclass
class Staged:
    directory: Path
    xml: str
    kernel: Path | None
    ramdisk: Path | None


class InstanceManager:
    def __init__(
        self,
        config: NodeControllerConfig,
        db: aiosqlite.Connection,
        hypervisor: Hypervisor,
        cache: ImageCache,
        notifier: Notifier,
    ):
        self.config, self.db, self.hv, self.cache, self.notifier = config, db, hypervisor, cache, notifier
        self.records = InstanceRecords(db)
        self.flavour = config.HYPERVISOR
        self.root = config.instance_path
        self.instances: dict[str, Instance] = {}
        self.unknown_domains: dict[str, str] = {}
        self.sweeps = 0  # completed monitor sweeps: shows the monitor is alive and has looked since a change
        self.orphan_dirs: list[str] = []
        self.disk_ops = asyncio.Semaphore(config.CONCURRENT_DISK_OPS)
        self._monitor: asyncio.Task[Any] | None = None
        self._background = TaskSet(log)
        self.disk_mode = config.KOALA_NC_DISK_DRIVER or ("copy" if self.flavour == "xen" else "overlay")
        self.domain_uuids: dict[str, str] = {}  # instance id -> the UUID of the domain of its run here
        hypervisor.event_filter = self._current_domain

    # --- paths --------------------------------------------------------------------------------------------
    def instance_dir(self, request: RunInstanceRequest) -> Path:
        owner = request.owner_id if _SAFE_OWNER.match(request.owner_id or "") else "_"
        return self.root / owner / request.instance_id.lower()

    # --- start / stop ------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        await self.adopt()
        self._monitor = asyncio.create_task(self._monitor_loop(), name="nc monitor")

    async def stop(self) -> None:
        """Stop loops; staging in progress is abandoned (its record says Pending: the next start resumes it)."""
        tasks = [t for t in (self._monitor, *self._background) if t]
        tasks += [i.task for i in self.instances.values() if i.task and not i.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        return self._background.spawn(coro, name)

    # --- records ------------------------------------------------------------------------------------------
    async def _save(self, inst: Instance) -> None:
        """Write the record (inserted the first time); returns once committed, in a transaction it may share."""
        if inst.request_json is None:
            inst.request_json = inst.request.model_dump_json()
        await self.records.save(
            (
                inst.id,
                inst.request_json,
                inst.state,
                inst.detail,
                inst.reason,
                inst.launch_time,
                inst.updated_at,
                inst.teardown_at,
                json.dumps([str(p) for p in inst.pins]),
            )
        )

    async def _set(self, inst: Instance, state: NcState, detail: str, reason: str = "", push: bool = True) -> bool:
        """Change state (written, then pushed to the CC unless `push` is False: the caller pushes once it has
        acted); False if nothing changed or it is already Teardown."""
        if inst.state == "Teardown" and state != "Teardown":
            return False
        if (inst.state, inst.detail) == (state, detail) and (not reason or reason == inst.reason):
            return False
        inst.state, inst.detail, inst.updated_at = state, detail, time.time()
        if reason:
            inst.reason = reason
        if state == "Teardown" and inst.teardown_at is None:
            inst.teardown_at = inst.updated_at
        await self._save(inst)
        log.info("%s: %s (%s)%s", inst.id, state, detail, f": {reason}" if reason else "")
        if push:
            self.notifier.changed(inst.id)
        return True

    # --- operations ---------------------------------------------------------------------------------------
    async def run(self, request: RunInstanceRequest) -> InstanceInfo:
        # Not pushed: the answer is the CC's word of the admission; pushes carry the changes after it (a push
        # fewer per launch, half of a simulated fleet's pushes, each a signed call the CC verifies).
        inst, known = await self.admit(request, "staging", push=False)
        if not known:
            log.info("%s: Pending (staging) %s on %s", inst.id, request.vm_type.name, self.flavour)
            inst.task = asyncio.create_task(self._stage(inst), name=f"stage {inst.id}")
        return inst.info()

    async def admit(self, request: RunInstanceRequest, detail: str, push: bool = True) -> tuple[Instance, bool]:
        """Check a request, room for it, and record it as Pending/`detail` before anything is built (pushed to the
        CC unless `push` is False: the caller answers it). (instance, True) when the same reservation's instance is
        known here already (a retried call)."""
        if not is_id(request.instance_id, "i"):
            raise RpcError(400, "InvalidInstanceID.Malformed", f"{request.instance_id!r} is not an instance id")
        for ref in (request.image, request.kernel, request.ramdisk):
            if ref is not None and (not is_id(ref.id) or ref.id.split("-")[0].lower() not in ("emi", "eki", "eri")):
                raise RpcError(400, "InvalidAMIID.Malformed", f"{ref.id!r} is not an image id")
        if request.user_data and configdrive.user_data(request) == b"":
            raise RpcError(400, "InvalidUserData.Malformed", "user data must be base64")
        _check_volumes(request)
        if request.net.bridge:
            from services.node_controller.network import valid_bridge

            if not valid_bridge(request.net.bridge):
                raise RpcError(400, "InvalidParameterValue", f"invalid bridge name {request.net.bridge!r}")
        existing = self.instances.get(request.instance_id)
        if existing is not None and existing.state == "Teardown" and request.volumes:
            if existing.request.reservation_id != request.reservation_id:
                await self._replace(existing)  # a new run of a stopped EBS-backed instance
                existing = None
        if existing is not None:
            if existing.request.reservation_id != request.reservation_id:
                raise RpcError(409, "InstanceIdInUse", f"{request.instance_id} is already used here")
            return existing, True  # a retried call: answer what is
        free = self.free()
        vm = request.vm_type
        if vm.cores > free["cores"] or vm.memory_mb > free["memory_mb"] or vm.disk_gb > free["disk_gb"]:
            raise RpcError(
                409,
                "InsufficientResources",
                f"{vm.name} needs {vm.cores} cores, {vm.memory_mb} MiB, {vm.disk_gb} GB; free: {free['cores']}"
                f" cores, {free['memory_mb']} MiB, {free['disk_gb']} GB",
            )
        now = time.time()
        inst = Instance(request, "Pending", detail, now, now)
        self.instances[inst.id] = inst
        try:
            await self._save(inst)  # the record exists before anything is built
        except Exception:
            self.instances.pop(inst.id, None)
            raise
        if push:
            self.notifier.changed(inst.id)
        return inst, False

    async def _replace(self, old: Instance) -> None:
        """Forget an ended run of an instance id before a new run of it starts here."""
        with contextlib.suppress(HypervisorError):
            await self.hv.destroy(old.id)
        self._release(old)
        if not old.files_removed:
            await self._remove_files(old)
        await self._forget(old)

    async def terminate(self, instance_id: str) -> InstanceInfo:
        inst = self._get(instance_id)
        if inst.state != "Teardown":
            # Not pushed: the answer, sent once the domain is destroyed, is the CC's word of the end.
            await self._teardown(inst, "terminated", "terminated by request", push=False)
        elif inst.destroyed is not None:
            await inst.destroyed.wait()  # a repeated call answers once the first one's destroy is done
        return inst.info()

    async def reboot(self, instance_id: str) -> InstanceInfo:
        inst = self._get(instance_id)
        if inst.state != "Extant" or inst.detail in (SUSPENDING, SUSPENDED, RESUMING, *MIGRATING):
            raise RpcError(409, "IncorrectInstanceState", f"{instance_id} is {inst.state}/{inst.detail}")
        loop = asyncio.get_running_loop()
        grace = self.config.KOALA_NC_REBOOT_GRACE_SECONDS
        inst.reboot_until = loop.time() + REBOOT_GRACE  # Xen may report the restart as a stop and a start
        restarted = inst.restarted = asyncio.Event()
        try:
            await self.hv.reboot(inst.id, acpi=self.flavour != "xen")
        except HypervisorError as err:
            log.info("%s: the reboot request failed (%s): reset now", inst.id, err)
            restarted.set()
            try:
                await self.hv.reset(inst.id)
            except HypervisorError as failed:
                raise RpcError(500, "RebootFailed", f"{instance_id}: {failed}") from None
        else:
            log.info("%s: reboot requested (ACPI); a reset follows if it has not restarted in %.0f s", inst.id, grace)
        self._spawn(self._finish_reboot(inst, restarted, grace), f"reboot {inst.id}")
        return inst.info()

    async def _finish_reboot(self, inst: Instance, restarted: asyncio.Event, grace: float) -> None:
        """Reset a guest that did not restart within the grace period after the ACPI request."""
        in_time = False
        try:
            await asyncio.wait_for(restarted.wait(), grace)
            in_time = True
        except TimeoutError:
            pass
        superseded = inst.restarted is not restarted  # a later RebootInstance waits for the guest now
        if not superseded:
            inst.restarted = None
        if in_time:
            log.info("%s: the guest restarted", inst.id)
            return
        if superseded:
            log.info("%s: a reboot request's grace ended; a later request waits for the restart now", inst.id)
            return
        if inst.state != "Extant" or self.instances.get(inst.id) is not inst:
            return  # terminated meanwhile
        try:
            await self.hv.reset(inst.id)
            log.info("%s: no restart %.0f s after the ACPI request: hard reset", inst.id, grace)
        except HypervisorError as err:
            log.warning("%s: hard reset failed: %s", inst.id, err)

    async def suspend(self, instance_id: str) -> InstanceInfo:
        """Save the running guest to its directory and stop it (its cores and memory go back to the node)."""
        inst = self._get(instance_id)
        if inst.state == "Extant" and inst.detail == SUSPENDED:
            return inst.info()
        if inst.state != "Extant" or inst.detail in (SUSPENDING, RESUMING, *MIGRATING):
            raise RpcError(409, "IncorrectInstanceState", f"{instance_id} is {inst.state}/{inst.detail}")
        path = self.instance_dir(inst.request) / SAVE_FILE
        await self._set(inst, "Extant", SUSPENDING)  # written first: a crash mid-save is sorted out at restart
        try:
            await self.hv.save(inst.id, str(path))
        except HypervisorError as err:
            await self._set(inst, "Extant", "running")
            raise RpcError(500, "SuspendFailed", f"{instance_id}: {err}") from None
        await self._set(inst, "Extant", SUSPENDED)
        return inst.info()

    async def resume(self, instance_id: str) -> InstanceInfo:
        """Restore a suspended guest where it was, if the node has its cores and memory free."""
        inst = self._get(instance_id)
        if inst.state != "Extant" or inst.detail != SUSPENDED:
            raise RpcError(409, "IncorrectInstanceState", f"{instance_id} is {inst.state}/{inst.detail}, not suspended")
        free, vm = self.free(), inst.request.vm_type
        if vm.cores > free["cores"] or vm.memory_mb > free["memory_mb"]:
            raise RpcError(409, "InsufficientResources", f"{vm.name} does not fit on this node now")
        path = self.instance_dir(inst.request) / SAVE_FILE
        await self._set(inst, "Extant", RESUMING)
        try:
            await self.hv.restore(str(path))
        except HypervisorError as err:
            await self._set(inst, "Extant", SUSPENDED)
            raise RpcError(500, "ResumeFailed", f"{instance_id}: {err}") from None
        state = await self.hv.state(inst.id)
        await self._set(inst, "Extant", state if state in EXTANT_DETAILS else "running")
        await asyncio.get_running_loop().run_in_executor(None, lambda: path.unlink(missing_ok=True))
        return inst.info()

    async def console_output(self, instance_id: str) -> bytes:
        inst = self._get(instance_id)
        return await console.tail(self.instance_dir(inst.request) / "console.log")

    def describe(self, ids: list[str]) -> list[InstanceInfo]:
        if not ids:
            return [inst.info() for inst in self.instances.values()]
        return [self.instances[i].info() for i in ids if i in self.instances]

    def snapshot(self, instance_id: str) -> InstanceInfo | None:
        inst = self.instances.get(instance_id)
        return inst.info() if inst else None

    def launching_besides(self, ids: Collection[str]) -> bool:
        """Whether an instance other than `ids` is being launched here (its changes are on their way)."""
        return any(inst.state == "Pending" and inst.id not in ids for inst in self.instances.values())

    def _get(self, instance_id: str) -> Instance:
        inst = self.instances.get(instance_id)
        if inst is None:
            raise RpcError(404, "InvalidInstanceID.NotFound", f"no instance {instance_id} on this node")
        return inst

    # --- resources ----------------------------------------------------------------------------------------
    def held(self) -> dict[str, int]:
        active = [i for i in self.instances.values() if i.state != "Teardown"]
        running = [i for i in active if i.detail != SUSPENDED]  # a suspended guest holds only its disk
        return {
            "cores": sum(i.request.vm_type.cores for i in running),
            "memory_mb": sum(i.request.vm_type.memory_mb for i in running),
            "disk_gb": sum(i.request.vm_type.disk_gb for i in active),
            "instances": len(active),
        }

    limits: dict[str, int] = {"cores": 0, "memory_mb": 0, "disk_gb": 0}

    def free(self) -> dict[str, int]:
        held = self.held()
        return {key: self.limits[key] - held[key] for key in ("cores", "memory_mb", "disk_gb")}

    # --- staging ------------------------------------------------------------------------------------------
    async def stage_files(self, inst: Instance, shared: bool = False) -> Staged:
        """The instance's images (cached, pinned), disks and config drive, and its domain XML; `shared`: the directory
        is another node's running instance's (shared storage, a migration coming here), its files are not made."""
        request = inst.request
        directory = self.instance_dir(request)
        await asyncio.get_running_loop().run_in_executor(None, lambda: directory.mkdir(parents=True, exist_ok=True))
        ebs_root = any(v.root for v in request.volumes)  # the root is a volume: no image to fetch
        refs = [None if ebs_root else request.image, request.kernel, request.ramdisk]
        paths = await asyncio.gather(*(self.cache.acquire(ref, inst.pins) if ref else _none() for ref in refs))
        await self._save(inst)  # remember the pins
        image, kernel, ramdisk = paths
        rbd_auth = ("", "")
        if any(v.rbd is not None for v in request.volumes):  # kept in Ceph: opened with this node's key
            try:
                rbd_auth = await node_auth(self.config, self.hv, self.flavour in ("kvm", "qemu"))
            except RbdSetupError as err:
                raise disks.DiskError(str(err)) from None
        volumes = [  # EBS volumes it boots with, the root first (the guest's first disk)
            DiskSpec(Path(v.volume_id), "root" if v.root else "volume", iscsi=v.target, serial=v.volume_id,
                     rbd=v.rbd, rbd_auth=rbd_auth)
            for v in sorted(request.volumes, key=lambda v: not v.root)
        ]  # fmt: skip
        async with self.disk_ops:
            disk_list = volumes
            if image is not None and not shared:
                disk_list = await disks.make_disks(
                    image,
                    directory,
                    request.vm_type.disk_gb,
                    self.config.SWAP_SIZE,
                    self.disk_mode,
                    self.root / ".templates",
                )
                disk_list += volumes
            if self.config.KOALA_NC_CONFIG_DRIVE and not shared:
                iso = await configdrive.build(directory / "config.iso", request)
                disk_list.append(DiskSpec(iso, "config", readonly=True))
        xml = render(self._spec(inst, disk_list, kernel, ramdisk, directory), self.flavour)
        return Staged(directory, xml, kernel, ramdisk)

    async def _stage(self, inst: Instance) -> None:
        try:
            staged = await self.stage_files(inst)
            xml = staged.xml
            await asyncio.get_running_loop().run_in_executor(None, (staged.directory / "libvirt.xml").write_text, xml)
            # Written before the domain exists; not pushed: the domain's start follows at once, and pushed alone each
            # step of a burst of launches took a push of its own (a simulated fleet pushed 1,022 times where 642 do).
            await self._set(inst, "Pending", "booting", push=False)
            self.domain_uuids[inst.id] = self._uuid(inst.id)
            await self._create(xml, inst.id)
            state = await self.hv.state(inst.id)
            if state in EXTANT_DETAILS:
                await self._set(inst, "Extant", state)
        except asyncio.CancelledError:
            raise
        except ImageFetchError as err:
            await self._teardown(inst, "failed", f"image {err.code}: {err.message}", from_task=True)
        except disks.DiskError as err:
            await self._teardown(inst, "failed", f"disk: {err}", from_task=True)
        except HypervisorError as err:
            await self._teardown(inst, "failed", f"libvirt: {err}", from_task=True)
        except OSError as err:
            await self._teardown(inst, "failed", f"staging: {err.strerror or err}", from_task=True)
        except Exception as err:  # never leave an instance Pending forever because of a bug
            log.exception("%s: staging failed", inst.id)
            await self._teardown(inst, "failed", f"internal error: {type(err).__name__}", from_task=True)

    def _uuid(self, instance_id: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"koala:{self.config.KOALA_SERVICE_ID}:{instance_id}"))

    def _current_domain(self, name: str, domain_uuid: str) -> bool:
        """Whether a libvirt event is about the domain of the instance's current run here (the one this NC made or
        took over), not an earlier run's or another NC's domain of the same name on a shared libvirtd."""
        expected = self.domain_uuids.get(name)
        return expected is None or expected == domain_uuid

    def _made_here(self, inst: Instance, dom: DomainInfo) -> bool:
        """Whether a domain named as an ended instance is still the one this NC made (its UUID), not a new run of
        the instance that another NC on the same libvirtd started since (a stopped EBS-backed instance started
        again elsewhere)."""
        return not dom.uuid or dom.uuid == self._uuid(inst.id)

    def _spec(
        self, inst: Instance, disk_list: list[DiskSpec], kernel: Path | None, ramdisk: Path | None, directory: Path
    ) -> DomainSpec:
        request = inst.request
        cmdline = self.config.KOALA_NC_KERNEL_CMDLINE
        return DomainSpec(
            name=request.instance_id,
            uuid=self._uuid(request.instance_id),
            memory_mb=request.vm_type.memory_mb,
            vcpus=request.vm_type.cores,
            disks=disk_list,
            console_log=directory / "console.log",
            owner_id=request.owner_id,
            kernel=kernel,
            ramdisk=ramdisk,
            bridge=request.net.bridge,
            mac=request.net.private_mac,
            extra_cmdline=cmdline,
            tags={"reservation": request.reservation_id},
        )

    async def _create(self, xml: str, name: str = "") -> None:
        """Create the domain; retried (up to 5 times, as the reference) only while the connection is lost, and for
        a while when an ended run of the instance still holds its name (an EBS-backed instance started again right
        after its stop, here or on another NC sharing this libvirtd, while the old domain is being destroyed)."""
        backoff = Backoff(0.2, 10.0)
        name_held_until = asyncio.get_running_loop().time() + NAME_HELD_GRACE
        attempt = 0
        while True:
            attempt += 1
            try:
                await self.hv.create(xml)
                return
            except HypervisorError as err:
                held = err.code == libvirt.VIR_ERR_OPERATION_FAILED and "already exists" in str(err)
                if held and asyncio.get_running_loop().time() < name_held_until and await self._earlier_run(name):
                    await asyncio.sleep(0.5)
                    continue
                if not err.lost or attempt >= CREATE_ATTEMPTS:
                    raise
                log.warning("domain create failed (%s), retrying", err)
                try:
                    await asyncio.wait_for(self.hv.connected.wait(), timeout=30)
                except TimeoutError:
                    raise err from None
                await backoff.wait()

    async def _earlier_run(self, name: str) -> bool:
        """Whether the domain holding `name` is a Koala run of that instance (an ended one on its way out), not a
        foreign domain (which is never waited for, nor touched)."""
        if not name:
            return False
        dom = next((d for d in await self.hv.domains() if d.name == name), None)
        return dom is not None and dom.tag is not None and dom.tag["id"] == name

    # --- teardown -----------------------------------------------------------------------------------------
    async def _teardown(
        self, inst: Instance, detail: str, reason: str, from_task: bool = False, push: bool = True
    ) -> None:
        """End the run (pushed to the CC unless `push` is False: the caller answers it)."""
        if inst.state == "Teardown":
            return
        task = inst.task
        if task is not None and not task.done() and not from_task:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        # Written before the domain is destroyed (a crash finishes the teardown), pushed after it: a stopped
        # EBS-backed instance may start on another node as soon as the CLC hears of the end, and its root volume
        # must not be in two running guests at once.
        inst.shown, destroyed = (inst.state, inst.detail), asyncio.Event()
        inst.destroyed = destroyed
        try:
            pushed = await self._set(inst, "Teardown", detail, reason, push=False)
            await self.hv.destroy(inst.id)
        except HypervisorError as err:
            log.warning("%s: destroy failed (%s); the monitor will retry", inst.id, err)
        finally:
            inst.shown = None
            destroyed.set()
        if pushed and push:
            self.notifier.changed(inst.id)
        self._release(inst)
        if not self.config.MANUAL_INSTANCES_CLEANUP:
            await self._remove_files(inst)

    def _release(self, inst: Instance) -> None:
        for path in inst.pins:
            self.cache.release(path)
        inst.pins = []

    async def _remove_files(self, inst: Instance) -> None:
        if inst.detail == LEFT_SHARED:  # another node's guest runs on them now
            inst.files_removed = True
            return
        directory = self.instance_dir(inst.request)
        await asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, directory, True)
        inst.files_removed = True

    # --- events and monitoring ----------------------------------------------------------------------------
    def on_event(self, name: str, event: str, detail: int) -> None:
        """A libvirt lifecycle event (called in the asyncio loop)."""
        inst = self.instances.get(name)
        if inst is None:
            if event == "started" and _LOOKS_OURS.match(name):
                self._spawn(self.reconcile(), "reconcile")  # someone started a look-alike: report it
            return
        self._spawn(self._on_event(inst, event, detail), f"event {name}")

    async def _on_event(self, inst: Instance, event: str, detail: int) -> None:
        if inst.state == "Teardown" or inst.detail in MIGRATING:
            return
        if event == "rebooted":
            if inst.restarted is not None:
                inst.restarted.set()
            return
        if event in ("started", "resumed"):
            inst.reboot_until = 0.0 if event == "started" else inst.reboot_until
            if inst.detail not in ("staging", SUSPENDING, SUSPENDED, RESUMING):
                await self._set(inst, "Extant", "running")
        elif event == "suspended":
            await self._set(inst, "Extant", "paused")
        elif event in ("stopped", "crashed"):
            if asyncio.get_running_loop().time() < inst.reboot_until:
                return  # our own destroy-and-recreate
            if inst.detail in (SUSPENDING, SUSPENDED, RESUMING) or detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED:
                return  # our own save
            crashed = event == "crashed" or detail in (
                libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED,
                libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED,
            )
            if inst.detail == "staging":
                return
            if crashed:
                await self._teardown(inst, "crashed", "the guest crashed")
            elif detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED:
                await self._teardown(inst, "shutoff", "the domain was destroyed outside the NC")
            else:
                await self._teardown(inst, "shutoff", "the guest shut down")

    async def _monitor_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.KOALA_NC_MONITOR_SECONDS)
            try:
                await self.reconcile()
            except HypervisorError as err:
                log.warning("monitor: libvirt unavailable (%s)", err)
            except Exception:
                log.exception("monitor sweep failed")

    async def reconcile(self) -> None:
        """The safety net: compare libvirt's domains with the records and act on every difference."""
        domains = {d.name: d for d in await self.hv.domains()}
        ours = {name: d for name, d in domains.items() if _ours(d)}
        loop_now = asyncio.get_running_loop().time()
        now = time.time()
        for inst in list(self.instances.values()):
            dom = ours.get(inst.id)
            if inst.state == "Teardown":
                if dom is not None and self._made_here(inst, dom):
                    with contextlib.suppress(HypervisorError):
                        await self.hv.destroy(inst.id)
                if inst.teardown_at and now - inst.teardown_at > self.config.KOALA_NC_FORGET_SECONDS:
                    await self._forget(inst)
                continue
            if inst.state == "Pending" and now - inst.launch_time > self.config.INSTANCE_TIMEOUT:
                await self._teardown(
                    inst, "failed", f"boot timeout: still {inst.detail} after {self.config.INSTANCE_TIMEOUT:.0f} s"
                )
                continue
            if loop_now < inst.reboot_until or inst.detail in ("staging", SUSPENDING, RESUMING, *MIGRATING):
                continue
            if inst.detail == SUSPENDED:
                continue  # no domain while suspended: that is the point
            if dom is None:
                if inst.state == "Extant" or (inst.task is None or inst.task.done()):
                    # libvirt's stopped event says why; condemn on the sweep's word only if none came meanwhile.
                    inst.missing_since = inst.missing_since or loop_now
                    if loop_now - inst.missing_since >= MISSING_GRACE:
                        await self._teardown(inst, "shutoff", "the domain is gone")
                continue
            inst.missing_since = 0.0
            if dom.state in ("shutoff", "crashed"):
                await self._teardown(inst, dom.state, f"the domain is {dom.state}")
            elif dom.state in EXTANT_DETAILS:
                await self._set(inst, "Extant", dom.state)
        self._find_unknown(domains)
        self.sweeps += 1

    def _find_unknown(self, domains: dict[str, DomainInfo]) -> None:
        """Domains that look like ours (our tag, or an instance-like name) without a record of ours."""
        unknown = {}
        for name, dom in domains.items():
            tag = dom.tag
            if name in self.instances and tag is not None and tag["id"] == name:
                continue
            if tag is not None:
                unknown[name] = f"tagged as Koala instance {tag['id']} of {tag['owner'] or '?'}, no record"
            elif _LOOKS_OURS.match(name):
                unknown[name] = "named like an instance but not tagged by this NC"
        for name, why in unknown.items():
            if name not in self.unknown_domains:
                log.warning("unknown domain %s looks like ours (%s): reported, not destroyed", name, why)
        self.unknown_domains = unknown

    async def _forget(self, inst: Instance) -> None:
        await self.db.execute("DELETE FROM instances WHERE instance_id = ?", (inst.id,))
        await self.db.commit()
        self.instances.pop(inst.id, None)
        self.domain_uuids.pop(inst.id, None)

    # --- restart ------------------------------------------------------------------------------------------
    async def adopt(self) -> None:
        """After a (re)start: take over running domains and records; resume or undo what was interrupted."""
        async with self.db.execute("SELECT * FROM instances") as cursor:
            rows = await cursor.fetchall()
        domains = {d.name: d for d in await self.hv.domains()}
        resumed = adopted = condemned = 0
        for row in rows:
            request = RunInstanceRequest.model_validate_json(row["request"])
            inst = Instance(
                request,
                row["state"],
                row["detail"],
                row["launch_time"],
                row["updated_at"],
                row["reason"],
                row["teardown_at"],
                [Path(p) for p in json.loads(row["pins"])],
            )
            self.instances[inst.id] = inst
            for path in inst.pins:
                self.cache.pin(path)
            dom = domains.get(inst.id)
            dom = dom if dom is not None and _ours(dom) else None
            if inst.state == "Teardown":
                # Perhaps killed mid-teardown: finish it (destroy and file removal are both idempotent).
                self._release(inst)
                if dom is not None and self._made_here(inst, dom):
                    with contextlib.suppress(HypervisorError):
                        await self.hv.destroy(inst.id)
                if not self.config.MANUAL_INSTANCES_CLEANUP:
                    await self._remove_files(inst)
                continue
            if inst.detail in MIGRATING:
                adopted += 1
                continue  # the migration's own record decides (NodeMigrations.adopt)
            saved = (self.instance_dir(request) / SAVE_FILE).exists()
            if inst.state == "Extant" and inst.detail in (SUSPENDING, SUSPENDED, RESUMING) and dom is None and saved:
                await self._set(inst, "Extant", SUSPENDED)  # the save finished (or the restore never started)
                adopted += 1
            elif dom is not None and dom.state in EXTANT_DETAILS:
                if dom.uuid:
                    self.domain_uuids[inst.id] = dom.uuid
                await self._set(inst, "Extant", dom.state)
                if saved:  # restored already, or the save never finished: the file is of no use
                    (self.instance_dir(request) / SAVE_FILE).unlink(missing_ok=True)
                adopted += 1
            elif dom is not None:
                await self._teardown(inst, dom.state, f"the domain was {dom.state} when the NC started")
                condemned += 1
            elif inst.state == "Pending":
                # Interrupted while staging or just before the domain was created: stage again from scratch.
                self._release(inst)
                await self._set(inst, "Pending", "staging")
                inst.task = asyncio.create_task(self._stage(inst), name=f"stage {inst.id}")
                resumed += 1
            else:
                await self._teardown(inst, "shutoff", "the domain was gone when the NC started")
                condemned += 1
        self._find_unknown(domains)
        self.orphan_dirs = self._orphans()
        for orphan in self.orphan_dirs:
            log.warning("instance directory %s has no record: left in place", orphan)
        await self.cache.sweep()
        log.info(
            "adoption: %d adopted, %d resumed staging, %d condemned, %d unknown domains",
            adopted,
            resumed,
            condemned,
            len(self.unknown_domains),
        )
        self.notifier.full(lambda: [i.info() for i in self.instances.values()])

    def _orphans(self) -> list[str]:
        known = {self.instance_dir(i.request) for i in self.instances.values()}
        found = []
        for owner in self.root.iterdir() if self.root.exists() else []:
            if not owner.is_dir() or owner.name.startswith("."):
                continue
            for directory in owner.iterdir():
                if directory.is_dir() and _LOOKS_OURS.match(directory.name) and directory not in known:
                    found.append(str(directory))
        return found


def _check_volumes(request: RunInstanceRequest) -> None:
    from services.node_controller.volumes import valid_target

    for volume in request.volumes:
        try:
            if volume.rbd is not None:
                check_target(volume.rbd)
        except RbdSetupError:
            valid = False
        else:
            valid = volume.target is None or valid_target(volume.target)
        if not is_id(volume.volume_id, "vol") or not valid:
            raise RpcError(400, "InvalidParameterValue", f"malformed boot volume {volume.volume_id[:20]!r}")
    if sum(1 for v in request.volumes if v.root) > 1:
        raise RpcError(400, "InvalidParameterValue", "more than one root volume")


def _ours(dom: DomainInfo) -> bool:
    tag = dom.tag
    return tag is not None and tag["id"] == dom.name


async def _none() -> None:
    return None
