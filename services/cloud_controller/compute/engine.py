"""The compute engine: the CLC's records of instances, reservations, images, addresses, networks, security groups,
key pairs and tags, and what acts on them. It is built of parts with one job each: `launch.Launcher`
(RunInstances), `reports.Reports` (instance state from the CCs' pushes and polls), `polling.Poller` (the polling
loops and housekeeping); this module holds the lookups, termination, suspension, reboot, console output and what
they share (freeing a terminated instance's resources, change listeners, background tasks). The EC2 actions call
it; it knows nothing of XML.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from common import ids
from common.messages.cc_nc import VmType
from common.rpc import PeerUnreachable, RpcError
from services.cloud_controller.compute import bursting
from services.cloud_controller.compute.addresses import Address, Addresses
from services.cloud_controller.compute.admission import Admission
from services.cloud_controller.compute.capacity import CapacityRefresh
from services.cloud_controller.compute.cc_client import ClusterClient
from services.cloud_controller.compute.errors import ComputeError
from services.cloud_controller.compute.images import ImageBackend, Images
from services.cloud_controller.compute.key_pairs import KeyPairs
from services.cloud_controller.compute.launch import Launcher, RunRequest, decode_user_data, mac_for
from services.cloud_controller.compute.networks import Networks
from services.cloud_controller.compute.polling import Poller
from services.cloud_controller.compute.reports import Reports
from services.cloud_controller.compute.security_groups import SecurityGroups
from services.cloud_controller.compute.stop_start import StopStart
from services.cloud_controller.compute.store import Image, Instance, Store
from services.cloud_controller.compute.tags import Tags
from services.cloud_controller.compute.vmtypes import DEFAULT_TYPE, VmTypes
from services.cloud_controller.database import Database

if TYPE_CHECKING:
    from services.cloud_controller.compute.netsync import NetworkSync
    from services.cloud_controller.ebs.roots import Roots
    from services.cloud_controller.leases.scheduler import LeaseScheduler

__all__ = ["Compute", "Principal", "RunRequest", "Settings", "decode_user_data", "mac_for"]
log = logging.getLogger("koala.clc.compute")


class Principal(Protocol):
    """Who acts: an authenticated user (common.messages.identity.Principal) or an owner the CLC acts for."""

    @property
    def account_id(self) -> str: ...
    @property
    def user_id(self) -> str: ...
    @property
    def is_admin(self) -> bool: ...


@dataclass
class Settings:
    default_kernel: str = ""
    default_ramdisk: str = ""
    quota_instances: int = 0  # per account; 0 = unlimited
    quota_cores: int = 0
    quota_addresses: int = 0
    auto_public_ip: bool = True  # give each instance a public address from the pool when one is free
    network_resources: str = "auto"  # on | off | auto (where the zone's CC runs a MANAGED mode)
    addrs_per_net: int = 32
    reservation_timeout: float = 120.0
    lost_after: float = 600.0  # an instance the CC stops reporting is terminated after this
    terminated_visible: float = 3600.0  # terminated instances stay visible this long
    poll_interval: float = 10.0
    fresh_report: float = 1.0  # a capacity report older than this is refreshed before refusing a launch
    burst: bursting.BurstPolicy = field(default_factory=bursting.BurstPolicy)  # who may burst into remote zones


class Compute:
    def __init__(
        self,
        db: Database,
        clusters: ClusterClient,
        settings: Settings,
        public_ips: list[str] | None = None,
        image_backend: ImageBackend | None = None,  # Walrus's image operations (compute/walrus.py)
    ):
        self.db, self.cc, self.settings = db, clusters, settings
        self.store = Store(db)
        self.tags = Tags(db)
        instances = self.tags.owned_in("instances", "instance_id")
        self.tags.register("i", "instance", instances, "InvalidInstanceID.NotFound")
        images = self.tags.owned_in("images", "image_id", " AND state != 'deregistered'")
        for prefix in ("emi", "eki", "eri"):
            self.tags.register(prefix, "image", images, "InvalidAMIID.NotFound")
        self.security_groups = SecurityGroups(db, self.tags)
        self.key_pairs = KeyPairs(db, self.tags)
        self.vmtypes = VmTypes(db)
        self.admission = Admission(timeout=settings.reservation_timeout)
        self.addresses = Addresses(db, public_ips or [])
        self.networks = Networks(db, addrs_per_net=settings.addrs_per_net)
        self.on_change: list[Callable[[list[Instance]], Any]] = []  # listeners (benchmarks, admin pages)
        # Told synchronously of instances a report has just changed in memory (before they are saved): for
        # what readers see at once (the DescribeInstances XML), never for acting on the change.
        self.on_applied: list[Callable[[list[Instance]], None]] = []
        self.on_forget: list[Callable[[list[str]], Awaitable[None]]] = [self.tags.forget]  # buried instance ids
        self._tasks: list[asyncio.Task[Any]] = []  # background tasks (cancelled at stop)
        self.images = Images(self.store, image_backend)
        self.zone_modes: dict[str, str] = {}  # zone -> its CC's VNET_MODE, from DescribeNetworks
        self.netsync: NetworkSync | None = None  # in MANAGED modes, set by setup.install
        from services.cloud_controller.compute.elastic import Elastic

        self.elastic = Elastic(self, self.store, settings, clusters, self.addresses)
        self.leases: LeaseScheduler | None = None  # the slot table, set by leases.setup.install
        self.metadata_extras: list[
            Callable[[Instance], dict[str, Any]]
        ] = []  # more meta-data entries (spot/instance-action)
        for zone in clusters.clusters:
            self.admission.known_zone(zone)
        self.roots: Roots | None = None  # EBS-backed images and instances, set when EBS is installed
        # The parts, each handed what it uses (the engine itself typed as the part's narrow protocol).
        self.capacity = CapacityRefresh(self.admission, clusters, self.vmtypes, self.background)
        self.stop_start = StopStart(self, self.store, clusters, self.admission)
        self.reports = Reports(self, self.store, settings, clusters, self.stop_start, self.capacity)
        self.poller = Poller(
            self,
            self.store,
            settings,
            clusters,
            self.admission,
            self.networks,
            self.capacity,
            self.elastic,
            self.reports,
            self.stop_start,
        )
        self.launcher = Launcher(
            self,
            self.store,
            settings,
            clusters,
            self.admission,
            self.networks,
            self.addresses,
            self.capacity,
            self.poller.refresh_network_mode,
        )

    # --- lifecycle --------------------------------------------------------------------------------------
    async def load(self) -> None:
        await self.vmtypes.load()
        await self.store.load()
        await self.addresses.load()
        await self.networks.load()
        await self.tags.load()
        for instance in self.store.instances.values():
            if instance.live:
                self.networks.mark(instance.vlan, instance.network_index)

    async def stop(self) -> None:
        await self.poller.stop()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    # --- lookups ----------------------------------------------------------------------------------------
    def vm_type(self, name: str) -> VmType:
        vm = self.vmtypes.get(name or DEFAULT_TYPE)
        if vm is None:
            raise ComputeError("InvalidParameterValue", f"Invalid value '{name}' for InstanceType.")
        return vm

    def image(self, image_id: str, principal: Principal, kind: str | None = None, implied: bool = False) -> Image:
        """An image the principal may launch, or the EC2 error for it. `implied`: a kernel or ramdisk that comes
        with a machine image (its default, or the cloud's): launching the machine image allows using it."""
        if not ids.is_id(image_id) or image_id.split("-")[0] not in ("emi", "eki", "eri", "ami", "aki", "ari"):
            raise ComputeError("InvalidAMIID.Malformed", f'Invalid id: "{image_id}"')
        image = self.store.images.get(ids.normalize(image_id))
        if image is None or not (implied or image.can_launch(principal.account_id)):
            raise ComputeError("InvalidAMIID.NotFound", f"The image id '[{image_id}]' does not exist")
        if kind and image.kind != kind:
            raise ComputeError("InvalidAMIID.NotFound", f"The image id '[{image_id}]' is not a {kind} image")
        if image.state != "available":
            raise ComputeError("InvalidAMIID.Unavailable", f"The image '{image_id}' is {image.state}")
        return image

    def instance(self, instance_id: str, principal: Principal) -> Instance:
        if not ids.is_id(instance_id, "i"):
            raise ComputeError("InvalidInstanceID.Malformed", f'Invalid id: "{instance_id}"')
        instance = self.store.instances.get(ids.normalize(instance_id))
        if instance is None or not self.visible(instance, principal):
            raise ComputeError("InvalidInstanceID.NotFound", f"The instance ID '{instance_id}' does not exist")
        return instance

    def instances(self, instance_ids: list[str], principal: Principal) -> list[Instance]:
        """The named instances, all of which must exist and be visible (EC2 names the missing ones)."""
        found, missing = [], []
        for instance_id in instance_ids:
            try:
                found.append(self.instance(instance_id, principal))
            except ComputeError as err:
                if err.code.endswith("Malformed"):
                    raise
                missing.append(instance_id)
        if missing:
            raise ComputeError("InvalidInstanceID.NotFound", f"The instance IDs '{', '.join(missing)}' do not exist")
        return found

    @staticmethod
    def visible(instance: Instance, principal: Principal) -> bool:
        # Accounts see their own instances only; the cloud admin too (as with key pairs and groups).
        return instance.owner_id == principal.account_id

    def live_counts(self, owner_id: str) -> tuple[int, int]:
        count = cores = 0
        for instance in self.store.instances.values():
            if instance.owner_id == owner_id and instance.live:
                count, cores = count + 1, cores + instance.cores
        return count, cores

    def managed(self, zone: str) -> bool:
        """Whether launches in `zone` get a VLAN and network index (MANAGED and MANAGED-NOVLAN modes) and their
        group's rules (also remote zones, which map them to a remote group)."""
        if self.settings.network_resources != "auto":
            return self.settings.network_resources == "on"
        return self.zone_modes.get(zone, "").startswith("MANAGED") or self.remote(zone)

    def remote(self, zone: str) -> bool:
        """A zone whose instances run in a remote cloud: their public address is the remote's."""
        capacity = self.admission.zones.get(zone)
        return capacity is not None and capacity.remote

    async def free_resources(self, instances: list[Instance]) -> None:
        """Give back what terminated instances held: launch-time addresses, associations, network indexes."""
        changed: list[Address] = []
        for instance in instances:
            self.networks.give_back(instance.vlan, instance.network_index)
            address = self.addresses.allocated.get(instance.public_ip)
            if address is not None and address.instance_id == instance.instance_id:
                if address.auto:
                    self.addresses.give_back(address)
                else:
                    address.instance_id = address.association_id = ""
                changed.append(address)
        if changed:
            await self.addresses.save(*changed)

    async def terminate_quietly(self, zone: str, instance_ids: list[str]) -> None:
        with contextlib.suppress(RpcError, PeerUnreachable):
            await self.cc.terminate_instances(zone, instance_ids)

    # --- Terminate, reboot, console ---------------------------------------------------------------------
    async def terminate(self, principal: Principal, instance_ids: list[str]) -> list[tuple[Instance, str]]:
        """Terminate instances; (instance, previous state) for each."""
        instances = self.instances(instance_ids, principal)
        for instance in instances:
            if instance.disable_api_termination and instance.state != "terminated":
                raise ComputeError(
                    "OperationNotPermitted",
                    f"The instance '{instance.instance_id}' may not be terminated. Modify its 'disableApiTermination'"
                    " instance attribute and try again.",
                )
        result, now = [], time.time()
        by_zone: dict[str, list[str]] = {}
        gone: list[Instance] = []
        for instance in instances:
            previous = instance.state
            result.append((instance, previous))
            if instance.state in ("pending", "running", "stopped"):
                if instance.node_id or instance.state != "pending":
                    self.store.set_state(instance, "shutting-down", "User initiated", now)
                    by_zone.setdefault(instance.zone, []).append(instance.instance_id)
                else:  # never placed: nothing to tear down below
                    self.store.set_state(instance, "terminated", "User initiated", now)
                    gone.append(instance)
            elif instance.state == "shutting-down":
                by_zone.setdefault(instance.zone, []).append(instance.instance_id)
        await self.store.save_instances([i for i, _ in result])
        if gone:
            await self.free_resources(gone)
        for zone, zone_ids in by_zone.items():
            try:
                answer = await self.cc.terminate_instances(zone, zone_ids)
            except (RpcError, PeerUnreachable) as err:
                # The poller retries: shutting-down instances are terminated again until the CC confirms.
                log.warning("TerminateInstances in %s failed (will retry): %s", zone, err)
                continue
            unknown = [self.store.instances[i] for i in zone_ids if i not in set(answer.instance_ids)]
            if unknown:  # the CC has no record of them: nothing runs
                await self._settle_terminated(unknown, "User initiated")
        return result

    async def _settle_terminated(self, instances: list[Instance], reason: str) -> None:
        now = time.time()
        changed = [i for i in instances if self.store.set_state(i, "terminated", reason, now)]
        if changed:
            await self.free_resources(changed)
            await self.store.save_instances(changed)
            self.changed(changed)

    async def suspend(self, instance_ids: list[str], resume: bool = False) -> dict[str, str]:
        """Suspend (libvirt save on its node) or resume instances, whoever owns them (the lease scheduler's
        preemptions and `koala admin suspend|resume`); instance id -> error for those not done."""
        errors: dict[str, str] = {}
        by_zone: dict[str, list[str]] = {}
        for instance_id in instance_ids:
            instance = self.store.instances.get(ids.normalize(instance_id)) if ids.is_id(instance_id, "i") else None
            wanted = "stopped" if resume else "running"
            if instance is None or instance.state != wanted:
                errors[instance_id] = "no such instance" if instance is None else f"it is {instance.state}"
                continue
            by_zone.setdefault(instance.zone, []).append(instance.instance_id)
        for zone, zone_ids in by_zone.items():
            try:
                answer = await self.cc.suspend_instances(zone, zone_ids, resume)
            except (RpcError, PeerUnreachable) as err:
                errors.update({i: f"{err.code}: {err.message}" for i in zone_ids})
                continue
            errors.update(answer.errors)
            now, changed = time.time(), []
            for instance_id in answer.instance_ids:
                instance = self.store.instances.get(instance_id)
                state = "running" if resume else "stopped"
                if instance is not None and self.store.set_state(instance, state, "" if resume else "suspended", now):
                    changed.append(instance)
            if changed:
                await self.store.save_instances(changed)
                self.changed(changed)
        return errors

    async def reboot(self, principal: Principal, instance_ids: list[str]) -> None:
        instances = self.instances(instance_ids, principal)
        by_zone: dict[str, list[str]] = {}
        for instance in instances:
            if instance.state in ("running", "pending"):
                by_zone.setdefault(instance.zone, []).append(instance.instance_id)
        for zone, zone_ids in by_zone.items():
            try:
                await self.cc.reboot_instances(zone, zone_ids)
            except (RpcError, PeerUnreachable) as err:
                raise ComputeError(
                    "InternalError", f"The cluster {zone} could not reboot: {err.message}", 500
                ) from None

    async def console_output(self, principal: Principal, instance_id: str) -> tuple[Instance, str]:
        instance = self.instance(instance_id, principal)
        if instance.state == "terminated" or (not instance.node_id and instance.state == "pending"):
            return instance, ""
        try:
            answer = await self.cc.console_output(instance.zone, instance.instance_id)
        except (RpcError, PeerUnreachable) as err:
            if err.status == 404:
                return instance, ""
            raise ComputeError("InternalError", f"Cannot get the console output: {err.message}", 500) from None
        return instance, answer.output

    # --- what the parts share ---------------------------------------------------------------------------
    def changed(self, instances: list[Instance]) -> None:
        _notify(self.on_change, instances, "state")

    def applied(self, instances: list[Instance]) -> None:
        _notify(self.on_applied, instances, "applied")

    def background(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run a coroutine as a task the engine owns (cancelled at stop; a failure is logged, never lost)."""
        task = asyncio.create_task(coroutine)
        self._tasks.append(task)

        def done(finished: asyncio.Task[Any]) -> None:
            if finished in self._tasks:
                self._tasks.remove(finished)
            if not finished.cancelled() and finished.exception() is not None:
                log.error("background task failed", exc_info=finished.exception())

        task.add_done_callback(done)


def _notify(listeners: Iterable[Callable[[list[Instance]], Any]], instances: list[Instance], what: str) -> None:
    """Tell each listener of `instances`; a listener that fails is logged and never breaks state handling."""
    for listener in listeners:
        try:
            listener(instances)
        except Exception:
            log.exception("%s listener failed", what)
