"""Live migration, the NC's part: the target prepares, the source sends, the CC decides when each side lets go.

Target (PrepareMigration): the instance is recorded Pending/migrating-in, then its images are cached and pinned
and its disks made as for a launch (the root an empty overlay on this node's cached image, so only the guest's
own blocks travel), with its config drive and bridge; the answer says where they are. CommitMigration (once the
source reports success) makes it Extant with the source's console history.

Source (MigrateInstance): the migration is recorded, the instance marked Extant/migrating, then libvirt migrates
the domain peer to peer to the target's libvirtd over TLS (`KOALA_NC_MIGRATION_URI` of the target, this node's
client certificate in `KOALA_NC_MIGRATION_PKI`), live, copying the non-shared disks (VIR_MIGRATE_NON_SHARED_INC:
the top layer only) and, with KOALA_NC_MIGRATION_TLS, QEMU's own streams over TLS as well. The destination XML is
this domain's own (same MAC, UUID, devices) with the paths the target gave. The migration runs in libvirtd: if
this process dies, it goes on, and the restart reads its outcome from the domain (gone: moved; here without a job:
failed). ReleaseMigration lets the moved copy go (never while a domain of it still runs here).

Software-emulated guests (TCG: the domain type `qemu`, no KVM) on QEMU before 9.0 have their memory copied with the
guest paused (their disks are still copied live): QEMU's live copy loses some of their stores (TCG_LIVE_RAM_SAFE_SINCE).

EBS volumes are shared, never copied: the target gets each attached volume as it must open it (its own initiator
name, which the CC's export admits besides the source's while the guest moves; or the RBD image), logs in to it once
to check, and records it; the destination XML takes the target's <source> (and <auth>) for each volume's disk. Once
the guest runs there, the target's records take its devices from the domain and the source forgets its own.

Shared storage: before the target prepares, the source writes a marker file with a random name in the instance's
directory (MarkMigration). A target that finds that very file at its own path for the instance shares the directory
with the source (the same instance path on a shared file system): it makes no disk or config drive there, nothing
is copied (libvirt is told the storage is shared: its own file-system test cannot see every kind of sharing, so
the migration is flagged unsafe-but-checked), and neither side removes the directory when it lets its copy go
(the instance's Teardown detail LEFT_SHARED, kept across restarts).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import secrets
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import aiosqlite
import defusedxml.ElementTree as SafeET
import libvirt

from common.decrypted_images import ImageFetchError
from common.messages.cc_nc import InstanceInfo
from common.messages.migration import (
    CommitMigrationRequest,
    MigrateInstanceRequest,
    MigrationLanded,
    MigrationMarker,
    MigrationStatus,
    MigrationTarget,
    PrepareMigrationRequest,
    ReleaseMigrationRequest,
)
from common.rpc import RpcError
from common.tasks import TaskSet
from services.node_controller import console, disks
from services.node_controller.cache import ImageCache
from services.node_controller.config import NodeControllerConfig
from services.node_controller.hypervisor import DomainInfo, Hypervisor, HypervisorError
from services.node_controller.instances import (
    EXTANT_DETAILS,
    LEFT_SHARED,
    MIGRATING_IN,
    MIGRATING_OUT,
    Instance,
    InstanceManager,
)
from services.node_controller.volumes import Volumes

log = logging.getLogger("koala.nc.migration")
POLL = 0.5
MARKER_PREFIX = ".koala-migration-"  # + the marker: a file the source writes in the instance's directory
# Under TCG, QEMU before 9.0 loses guest stores during a live memory copy: after each pass over the dirty bitmap it
# does not re-arm its software TLB, so a store through a TLB entry made before the pass marks no page dirty, and the
# target keeps that page as it was first sent. The guest's memory is silently corrupted (the migration tests' guests
# panicked in the slab allocator after a few moves; guests rewriting and checking a tmpfs file saw a stale page after
# two evacuations of three of them). Fixed upstream by "physmem: Fix migration dirty bitmap coherency with TCG memory
# access" (QEMU 9.0); Debian 12's QEMU 7.2 has not got it. Below that version a TCG guest's memory is copied paused.
TCG_LIVE_RAM_SAFE_SINCE = 9_000_000  # QEMU 9.0.0 as libvirt numbers versions


def destination_xml(xml: str, source_dir: Path, target: MigrationTarget) -> tuple[str, list[str]]:
    """The domain as it must be on the target: paths in this instance's directory moved to the target's, the
    kernel and ramdisk the target's cached ones, each EBS volume opened as the target opens it; and the disks to
    copy (file disks that are not read-only: the config drive is made on the target, network disks such as EBS
    volumes are shared; none when the instance's directory is shared)."""
    root = SafeET.fromstring(xml)
    _volumes_as_target(root, target.volume_disks)
    prefix, there = str(source_dir), target.instance_dir

    def moved(path: str) -> str:
        if path == prefix or path.startswith(prefix + "/"):
            return there + path[len(prefix) :]
        return path

    copied: list[str] = []
    for disk in root.findall("devices/disk"):
        for backing in disk.findall("backingStore"):
            disk.remove(backing)  # the target's overlay names its own backing file
        source = disk.find("source")
        if source is not None and source.get("file"):
            source.set("file", moved(source.get("file", "")))
        target_el = disk.find("target")
        if (
            disk.get("type") == "file"
            and disk.get("device", "disk") == "disk"
            and disk.find("readonly") is None
            and target_el is not None
        ):
            if not target.shared:
                copied.append(target_el.get("dev", ""))
    for element in root.iter():
        for attribute in ("file", "path"):
            value = element.get(attribute)
            if value:
                element.set(attribute, moved(value))
    if target.shared:  # one console log for both: the target's appends to what the source wrote
        for log_el in root.findall("devices/serial/log"):
            log_el.set("append", "on")
    os_el = root.find("os")
    if os_el is not None:
        for tag, path in (("kernel", target.kernel), ("initrd", target.ramdisk)):
            found = os_el.find(tag)
            if found is not None and path:
                found.text = path
    return ET.tostring(root, encoding="unicode"), [dev for dev in copied if dev]


def _volumes_as_target(root: ET.Element, volume_disks: dict[str, str]) -> None:
    """Each volume's disk (by its serial, the volume id) with the <source> and <auth> the target made: its own
    initiator name, or its own libvirt secret; the guest's device, address and alias stay."""
    for disk in root.findall("devices/disk"):
        serial = disk.find("serial")
        theirs = volume_disks.get(serial.text or "") if serial is not None else None
        if theirs is None or disk.get("type") != "network":
            continue
        made = SafeET.fromstring(theirs)
        for tag in ("source", "auth"):
            mine = disk.find(tag)
            index = list(disk).index(mine) if mine is not None else len(disk)
            if mine is not None:
                disk.remove(mine)
            replacement = made.find(tag)
            if replacement is not None:
                disk.insert(index, replacement)


class NodeMigrations:
    def __init__(
        self,
        config: NodeControllerConfig,
        db: aiosqlite.Connection,
        hv: Hypervisor,
        manager: InstanceManager,
        cache: ImageCache,
        node_id: str,
        volumes: Volumes | None = None,
    ):
        self.config, self.db, self.hv, self.manager, self.cache = config, db, hv, manager, cache
        self.volumes = volumes
        self.node_id = node_id
        self.status: dict[str, MigrationStatus] = {}
        self.targets: dict[str, MigrationTarget] = {}
        self._prepared: dict[str, asyncio.Task[Any]] = {}
        self._tasks = TaskSet(log)

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- source side, first: the marker -------------------------------------------------------------------------
    async def mark(self, instance_id: str) -> MigrationMarker:
        """A new marker file in the instance's directory (earlier ones removed), for the target to look for."""
        inst = self.manager._get(instance_id)
        if inst.state != "Extant":
            raise RpcError(409, "IncorrectInstanceState", f"{inst.id} is {inst.state}/{inst.detail}")
        marker = secrets.token_hex(16)
        directory = self.manager.instance_dir(inst.request)

        def write() -> None:
            for old in directory.glob(MARKER_PREFIX + "*"):
                old.unlink(missing_ok=True)
            (directory / f"{MARKER_PREFIX}{marker}").write_text(f"{self.node_id}\n")

        try:
            await asyncio.get_running_loop().run_in_executor(None, write)
        except OSError as err:
            raise RpcError(500, "MarkFailed", f"{inst.id}: {err.strerror or err}") from None
        return MigrationMarker(instance_id=inst.id, marker=marker)

    # --- target side ----------------------------------------------------------------------------------------
    async def prepare(self, request: PrepareMigrationRequest) -> MigrationTarget:
        run = request.run
        old = self.manager.instances.get(run.instance_id)
        if old is not None and old.state == "Teardown" and old.files_removed:
            await self.manager._forget(old)  # it ran here before and left (moved away): it may come back
        inst, known = await self.manager.admit(run, MIGRATING_IN)
        if known and inst.detail != MIGRATING_IN:
            raise RpcError(409, "IncorrectInstanceState", f"{inst.id} is {inst.state}/{inst.detail} here")
        directory = self.manager.instance_dir(inst.request)
        shared = await self._shared(directory, request.marker)
        if not known:
            log.info("%s: Pending (migrating-in) from %s%s", inst.id, request.source_node or "?",
                     " (its directory is shared with it)" if shared else "")  # fmt: skip
        task = self._prepared.get(inst.id)
        if task is None or (task.done() and task.exception() is not None):
            stage = self._stage(inst, request, shared)
            task = self._prepared[inst.id] = asyncio.create_task(stage, name=f"prepare {inst.id}")
        try:
            return await asyncio.shield(task)
        except (ImageFetchError, disks.DiskError, OSError, HypervisorError, RpcError) as err:
            self._prepared.pop(inst.id, None)
            reason = f"{err.code}: {err.message}" if isinstance(err, ImageFetchError | RpcError) else str(err)
            if self.volumes is not None:
                await self.volumes.forget_instance(inst.id)
            await self.manager._teardown(inst, LEFT_SHARED if shared else "failed", f"migration prepare: {reason}")
            if isinstance(err, RpcError):
                raise RpcError(err.status, err.code, f"{inst.id}: {err.message}") from None
            raise RpcError(500, "MigrationPrepareFailed", f"{inst.id}: {reason}") from None

    @staticmethod
    async def _shared(directory: Path, marker: str | None) -> bool:
        """Whether the instance's directory here holds the source's marker (`marker`; None: any marker, as a target
        that prepared finds it later: a source writes markers only in its own directory, never copied)."""

        def look() -> bool:
            if marker is None:
                return any(directory.glob(MARKER_PREFIX + "*"))
            return bool(marker) and (directory / f"{MARKER_PREFIX}{marker}").is_file()

        return await asyncio.get_running_loop().run_in_executor(None, look)

    async def _stage(self, inst: Instance, request: PrepareMigrationRequest, shared: bool) -> MigrationTarget:
        volume_disks: dict[str, str] = {}
        if self.volumes is not None and (request.volumes or request.run.volumes):
            volume_disks = await self.volumes.prepare_incoming(inst.id, request.volumes, request.run.volumes)
        staged = await self.manager.stage_files(inst, shared=shared)
        uri = self.config.KOALA_NC_MIGRATION_URI
        return MigrationTarget(
            instance_id=inst.id,
            node_id=self.node_id,
            libvirt_uri=uri,
            address=self.config.KOALA_NC_MIGRATION_ADDRESS or _host_of(uri),
            instance_dir=str(staged.directory),
            kernel=str(staged.kernel or ""),
            ramdisk=str(staged.ramdisk or ""),
            shared=shared,
            volume_disks=volume_disks,
        )

    async def commit(self, request: CommitMigrationRequest) -> MigrationLanded:
        inst = self.manager._get(request.instance_id)
        if inst.state == "Extant" and inst.detail not in (MIGRATING_IN, MIGRATING_OUT):
            return MigrationLanded(instance_id=inst.id, state=inst.state, detail=inst.detail)  # committed already
        if inst.detail != MIGRATING_IN:
            raise RpcError(409, "IncorrectInstanceState", f"{inst.id} is {inst.state}/{inst.detail} here")
        state = await self.hv.state(inst.id)
        if state not in EXTANT_DETAILS:
            raise RpcError(409, "MigrationNotLanded", f"{inst.id}: no running domain here ({state or 'none'})")
        directory = self.manager.instance_dir(inst.request)
        try:
            history = _b64(request.console)
        except ValueError:
            raise RpcError(400, "InvalidParameterValue", "console must be base64") from None
        if history:  # none from a source sharing the directory: the console log goes on in the same file
            await console.keep_history(directory / "console.log", history)
        xml = await self.hv.xml(inst.id)
        await asyncio.get_running_loop().run_in_executor(None, (directory / "libvirt.xml").write_text, xml)
        if self.volumes is not None:
            await self.volumes.settle_incoming(inst.id, xml)
        try:
            stats = await self.hv.job(inst.id, completed=True) or {}
        except HypervisorError:
            stats = {}
        self._prepared.pop(inst.id, None)
        await self.manager._set(inst, "Extant", state)
        landed = MigrationLanded(
            instance_id=inst.id,
            state=inst.state,
            detail=inst.detail,
            elapsed_ms=int(stats.get(libvirt.VIR_DOMAIN_JOB_TIME_ELAPSED, 0)),
            downtime_ms=int(stats.get(libvirt.VIR_DOMAIN_JOB_DOWNTIME, 0)),
        )
        log.info("%s: migrated here, Extant (%s); libvirt: %d ms, downtime %d ms", inst.id, state,
                 landed.elapsed_ms, landed.downtime_ms)  # fmt: skip
        return landed

    # --- source side ----------------------------------------------------------------------------------------
    async def migrate(self, request: MigrateInstanceRequest) -> MigrationStatus:
        inst = self.manager._get(request.instance_id)
        known = self.status.get(inst.id)
        if known is not None and known.state in ("running", "completed", "gone"):
            return self.describe(inst.id)  # a retried call
        if inst.state != "Extant" or inst.detail not in EXTANT_DETAILS:
            raise RpcError(409, "IncorrectInstanceState", f"{inst.id} is {inst.state}/{inst.detail}")
        if not request.target.libvirt_uri:
            raise RpcError(400, "MigrationUnavailable", "the target node offers no live migration URI")
        now = time.time()
        status = MigrationStatus(instance_id=inst.id, state="running", target_node=request.target.node_id)
        self.status[inst.id], self.targets[inst.id] = status, request.target
        await self.db.execute(
            "INSERT OR REPLACE INTO migrations(instance_id, target, state, error, stats, started_at, updated_at)"
            " VALUES (?, ?, 'running', '', '{}', ?, ?)",
            (inst.id, request.target.model_dump_json(), now, now),
        )
        await self.db.commit()  # written before libvirt hears of it
        await self.manager._set(inst, "Extant", MIGRATING_OUT)
        self._tasks.spawn(self._send(inst, request.target, request.mode), f"migrate {inst.id}")
        return status

    def _flags(self, mode: str, shared: bool = False, memory_paused: bool = False) -> int:
        """Live: the guest runs on while its memory is copied (paused only at the switch-over). Cold: the guest is
        paused for the whole copy (stop, move, start), the fallback that always converges. Shared: no disk copied
        (and libvirt's own shared-storage test overruled: the marker proved it). Memory paused: live, but the
        guest is paused once its disks are copied, for the copy of its memory (libvirt's non-live migration)."""
        flags: int = (
            (libvirt.VIR_MIGRATE_LIVE if mode == "live" and not memory_paused else 0)
            | libvirt.VIR_MIGRATE_PEER2PEER
            | (libvirt.VIR_MIGRATE_UNSAFE if shared else libvirt.VIR_MIGRATE_NON_SHARED_INC)
            | libvirt.VIR_MIGRATE_ABORT_ON_ERROR
        )
        if self.config.KOALA_NC_MIGRATION_TLS:
            flags |= libvirt.VIR_MIGRATE_TLS
        return flags

    async def _memory_copied_paused(self, xml: str) -> bool:
        """Whether the guest must be paused while its memory is copied: a TCG guest on a QEMU before 9.0."""
        if SafeET.fromstring(xml).get("type") != "qemu":
            return False
        return await self.hv.version() < TCG_LIVE_RAM_SAFE_SINCE

    async def _send(self, inst: Instance, target: MigrationTarget, mode: str = "live") -> None:
        started = time.monotonic()
        try:
            xml = await self.hv.xml(inst.id, migratable=True)
            memory_paused = mode == "live" and await self._memory_copied_paused(xml)
            dest_xml, copied = destination_xml(xml, self.manager.instance_dir(inst.request), target)
            params: dict[str, Any] = {libvirt.VIR_MIGRATE_PARAM_DEST_XML: dest_xml}
            if copied:
                params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = copied
            if self.config.KOALA_NC_MIGRATION_BANDWIDTH:
                params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = self.config.KOALA_NC_MIGRATION_BANDWIDTH
            if target.address:
                params[libvirt.VIR_MIGRATE_PARAM_URI] = f"tcp://{_bracketed(target.address)}"
            uri = target.libvirt_uri
            if self.config.KOALA_NC_MIGRATION_PKI:
                uri += ("&" if "?" in uri else "?") + f"pkipath={self.config.KOALA_NC_MIGRATION_PKI}"
            flags = self._flags(mode, target.shared, memory_paused)
            downtime = self.config.KOALA_NC_MIGRATION_MAX_DOWNTIME_MS
            how = mode + (", memory copied paused: TCG on QEMU < 9.0" if memory_paused else "")
            log.info("%s: migrating (%s) to %s (%s; disks copied %s%s; volumes %s)", inst.id, how, target.node_id,
                     target.libvirt_uri, copied, ", shared storage" if target.shared else "",
                     sorted(target.volume_disks))  # fmt: skip

            def send(conn: libvirt.virConnect) -> dict[str, Any]:
                dom = conn.lookupByName(inst.id)
                dom.migrateSetMaxDowntime(downtime, 0)
                dom.migrateToURI3(uri, params, flags)
                try:
                    return dict(dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED))
                except libvirt.libvirtError:
                    return {}

            stats = await self.hv.call_long(send)
        except HypervisorError as err:
            await self._failed(inst, f"libvirt: {err}")
            return
        except Exception as err:  # never leave it marked migrating because of a bug
            log.exception("%s: migration failed", inst.id)
            await self._failed(inst, f"internal error: {type(err).__name__}")
            return
        self._record_stats(inst.id, stats, completed=True)
        status = self.status[inst.id]
        status.elapsed_ms = status.elapsed_ms or int((time.monotonic() - started) * 1000)
        await self._finish(inst.id, "completed")
        log.info("%s: migrated to %s in %d ms (downtime %d ms)", inst.id, target.node_id, status.elapsed_ms,
                 status.downtime_ms)  # fmt: skip

    async def _failed(self, inst: Instance, error: str) -> None:
        try:
            state = await self.hv.state(inst.id)
        except HypervisorError:
            state = "unknown"
        if state == "paused":  # stopped for the copy (cold, or the switch-over): it goes on here
            try:
                await self.hv.call(lambda conn: conn.lookupByName(inst.id).resume())
                state = "running"
            except HypervisorError as err:
                log.warning("%s: cannot resume it after the failed migration: %s", inst.id, err)
        if state in EXTANT_DETAILS:
            log.warning("%s: migration failed, the guest runs on here: %s", inst.id, error)
            await self._finish(inst.id, "failed", error)
            await self.manager._set(inst, "Extant", state)
        else:  # not here (or cannot tell): perhaps on the target after all; the CC asks it before anything else
            log.warning("%s: migration ended with an error and no guest here (%s): outcome 'gone'", inst.id, error)
            await self._finish(inst.id, "gone", error)

    async def _finish(self, instance_id: str, state: str, error: str = "") -> None:
        status = self.status[instance_id]
        status.state, status.error = state, error  # type: ignore[assignment]
        await self.db.execute(
            "UPDATE migrations SET state = ?, error = ?, stats = ?, updated_at = ? WHERE instance_id = ?",
            (state, error, status.model_dump_json(), time.time(), instance_id),
        )
        await self.db.commit()

    def _record_stats(self, instance_id: str, stats: dict[str, Any], completed: bool = False) -> None:
        status = self.status.get(instance_id)
        if status is None or not stats:
            return
        status.data_total = int(stats.get(libvirt.VIR_DOMAIN_JOB_DATA_TOTAL, status.data_total))
        status.data_processed = int(stats.get(libvirt.VIR_DOMAIN_JOB_DATA_PROCESSED, status.data_processed))
        status.data_remaining = int(stats.get(libvirt.VIR_DOMAIN_JOB_DATA_REMAINING, status.data_remaining))
        status.elapsed_ms = int(stats.get(libvirt.VIR_DOMAIN_JOB_TIME_ELAPSED, status.elapsed_ms))
        if completed:  # while it runs, libvirt's "downtime" is only the expected one
            status.downtime_ms = int(stats.get(libvirt.VIR_DOMAIN_JOB_DOWNTIME, status.downtime_ms))

    async def describe_now(self, instance_id: str) -> MigrationStatus:
        """The migration's status, with libvirt's progress figures while it runs."""
        status = self.status.get(instance_id)
        if status is None:
            return MigrationStatus(instance_id=instance_id, state="none")
        if status.state == "running":
            try:
                stats = await self.hv.job(instance_id)
            except HypervisorError:
                stats = None
            if stats and stats.get("type", 0) != libvirt.VIR_DOMAIN_JOB_NONE:
                self._record_stats(instance_id, stats)
        return self.describe(instance_id)

    def describe(self, instance_id: str) -> MigrationStatus:
        status = self.status.get(instance_id)
        return status.model_copy() if status else MigrationStatus(instance_id=instance_id, state="none")

    async def release(self, request: ReleaseMigrationRequest) -> InstanceInfo:
        inst = self.manager._get(request.instance_id)
        if inst.state == "Teardown":
            await self._forget(inst.id)
            return inst.info()
        if request.outcome == "moved":
            if inst.detail != MIGRATING_OUT:
                raise RpcError(409, "IncorrectInstanceState", f"{inst.id} is {inst.state}/{inst.detail} here")
            if await self.hv.state(inst.id) is not None:  # never let go of the one running copy
                raise RpcError(409, "MigrationNotDone", f"{inst.id} still has a domain here")
            target = self.targets.get(inst.id)
            shared = target.shared if target is not None else False
            if self.volumes is not None:
                await self.volumes.forget_instance(inst.id)
            where = f"migrated to {request.target_node or 'another node'}"
            await self.manager._teardown(inst, LEFT_SHARED if shared else "migrated",
                                         where + (" (its files stay: shared storage)" if shared else ""))  # fmt: skip
        else:
            if inst.detail != MIGRATING_IN:
                raise RpcError(409, "IncorrectInstanceState", f"{inst.id} is {inst.state}/{inst.detail} here")
            task = self._prepared.pop(inst.id, None)
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            if self.volumes is not None:
                await self.volumes.forget_instance(inst.id)
            shared = await self._shared(self.manager.instance_dir(inst.request), None)
            await self.manager._teardown(inst, LEFT_SHARED if shared else "failed", "the migration here failed")
        await self._forget(inst.id)
        return inst.info()

    async def _forget(self, instance_id: str) -> None:
        self.status.pop(instance_id, None)
        self.targets.pop(instance_id, None)
        await self.db.execute("DELETE FROM migrations WHERE instance_id = ?", (instance_id,))
        await self.db.commit()

    # --- restart ----------------------------------------------------------------------------------------------
    async def adopt(self) -> None:
        """After the instance manager adopted its records: settle the migrations a restart interrupted."""
        async with self.db.execute("SELECT * FROM migrations") as cursor:
            rows = list(await cursor.fetchall())
        domains: dict[str, DomainInfo] = {d.name: d for d in await self.hv.domains()}
        for row in rows:
            instance_id = row["instance_id"]
            target = MigrationTarget.model_validate_json(row["target"])
            status = MigrationStatus(instance_id=instance_id, state=row["state"], target_node=target.node_id,
                                     error=row["error"])  # fmt: skip
            with contextlib.suppress(ValueError):  # (pydantic's ValidationError is one)
                status = MigrationStatus.model_validate({**json.loads(row["stats"] or "{}"), **status.model_dump()})
            self.status[instance_id], self.targets[instance_id] = status, target
            inst = self.manager.instances.get(instance_id)
            if inst is None or inst.state == "Teardown":
                continue
            if status.state != "running":
                continue
            if instance_id not in domains:
                # Gone from here while we were away: moved (the CC checks that the target runs it).
                await self._finish(instance_id, "gone")
                log.info("%s: the domain left while the NC was down: migration outcome 'gone'", instance_id)
            else:
                self._tasks.spawn(self._watch(inst), f"watch migration {instance_id}")
        for inst in list(self.manager.instances.values()):
            if inst.state == "Teardown":
                continue
            if inst.detail == MIGRATING_OUT and inst.id not in self.status:
                state = domains[inst.id].state if inst.id in domains else None
                if state in EXTANT_DETAILS:  # marked but never sent (killed in between)
                    await self.manager._set(inst, "Extant", state)
        log.info("migrations: %d recorded", len(rows))

    async def _watch(self, inst: Instance) -> None:
        """A migration libvirt went on with while this process was down: wait for its end, read its outcome."""
        while True:
            try:
                stats = await self.hv.job(inst.id)
            except HypervisorError:
                await asyncio.sleep(POLL)
                continue
            if stats is None:
                await self._finish(inst.id, "completed")
                log.info("%s: the migration finished while the NC was away", inst.id)
                return
            if stats.get("type", 0) == libvirt.VIR_DOMAIN_JOB_NONE:
                await self._failed(inst, "the migration ended while the NC was down; the guest is still here")
                return
            self._record_stats(inst.id, stats)
            await asyncio.sleep(POLL)


def _host_of(uri: str) -> str:
    """The host part of a libvirt URI (qemu+tls://HOST[:PORT]/system)."""
    if "://" not in uri:
        return ""
    rest = uri.split("://", 1)[1].split("/", 1)[0]
    if rest.startswith("["):
        return rest[1:].split("]", 1)[0]
    return rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest


def _bracketed(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as err:
        raise ValueError(str(err)) from None
