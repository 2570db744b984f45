"""The compute engine: launches (admission, addresses, network, the CC call, rollback), instance state from the
CCs' pushes and polls, termination, reboot, console output. The EC2 actions call it; it knows nothing of XML.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from common import ids
from common.messages.cc_nc import MAX_USER_DATA, ImageRef, NetConfig, VmType
from common.messages.clc_cc import (
    Ack,
    ClusterInstance,
    InstanceLaunch,
    NotifyInstancesRequest,
    RunInstancesRequest,
)
from common.messages.network import DescribeNetworksRequest
from common.rpc import PeerNotReached, PeerUnreachable, RpcError
from services.cloud_controller.compute import bursting
from services.cloud_controller.compute.addresses import Address, Addresses
from services.cloud_controller.compute.admission import Admission, Token, count_quota
from services.cloud_controller.compute.cc_client import ClusterClient
from services.cloud_controller.compute.errors import ComputeError, invalid
from services.cloud_controller.compute.images import Images
from services.cloud_controller.compute.key_pairs import KeyPairs
from services.cloud_controller.compute.networks import Networks
from services.cloud_controller.compute.security_groups import SecurityGroups
from services.cloud_controller.compute.store import Image, Instance, Reservation, Store
from services.cloud_controller.compute.tags import Tags
from services.cloud_controller.compute.vmtypes import DEFAULT_TYPE, VmTypes
from services.cloud_controller.database import Database

log = logging.getLogger("koala.clc.compute")
MAX_COUNT = 1000  # instances per RunInstances request
CC_STATES = {"Pending": "pending", "Extant": "running", "Teardown": "terminated"}


class Principal(Protocol):
    account_id: str
    user_id: str
    is_admin: bool


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


@dataclass
class RunRequest:
    image_id: str
    min_count: int = 1
    max_count: int = 1
    key_name: str = ""
    key_material: str = ""  # the key pair's public key, looked up by the caller
    groups: list[str] = field(default_factory=list)  # resolved security group names ("default" if none)
    group_ids: list[str] = field(default_factory=list)
    user_data: str = ""  # base64
    instance_type: str = ""
    zone: str = ""
    kernel_id: str = ""
    ramdisk_id: str = ""
    client_token: str = ""
    tags: list[tuple[str, str]] = field(default_factory=list)
    disable_api_termination: bool = False
    shutdown_behavior: str = "terminate"  # InstanceInitiatedShutdownBehavior
    capacity_reservation_id: str = ""  # CapacityReservationSpecification's target (leases/)
    capacity_preference: str = ""  # open | none ("" = open)
    spot: Any = None  # InstanceMarketOptions' spot options (leases/spot.py), or None for on-demand


def mac_for(instance_id: str) -> str:
    """Eucalyptus's MAC: d0:0d: + the 8 hex digits of the instance id."""
    digits = instance_id.split("-", 1)[1]
    return "d0:0d:" + ":".join(digits[i : i + 2] for i in range(0, 8, 2))


def decode_user_data(data: str) -> str:
    """Validate base64 user data (<= 16 KiB decoded); return it as base64."""
    if not data:
        return ""
    if len(data) > MAX_USER_DATA * 2:
        raise invalid("UserData", f"user data is limited to {MAX_USER_DATA} bytes")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid("UserData", "user data must be base64") from None
    if len(raw) > MAX_USER_DATA:
        raise invalid("UserData", f"user data is limited to {MAX_USER_DATA} bytes")
    return base64.b64encode(raw).decode()


class Compute:
    def __init__(
        self,
        db: Database,
        clusters: ClusterClient,
        settings: Settings,
        public_ips: list[str] | None = None,
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
        self.on_forget: list[Callable[[list[str]], Awaitable[None]]] = [self.tags.forget]  # buried instance ids
        self._tasks: list[asyncio.Task] = []
        self._pollers: dict[str, asyncio.Task] = {}
        self._polling = True
        self.images: Images | None = None  # set by setup.install
        self.zone_modes: dict[str, str] = {}  # zone -> its CC's VNET_MODE, from DescribeNetworks
        self.netsync: Any = None  # compute.netsync.NetworkSync in MANAGED modes, set by setup.install
        from services.cloud_controller.compute.elastic import Elastic

        self.elastic = Elastic(self)
        self._refresh_pending: set[str] = set()
        self.leases: Any = None  # leases.scheduler.LeaseScheduler (the slot table), set by setup.install
        self.metadata_extras: list[Callable[[Instance], dict]] = []  # more meta-data entries (spot/instance-action)
        for zone in clusters.clusters:
            self.admission.known_zone(zone)

    # --- lifecycle --------------------------------------------------------------------------------------
    async def load(self) -> None:
        await self.vmtypes.load()
        await self.store.load()
        await self.addresses.load()
        await self.networks.load()
        for instance in self.store.instances.values():
            if instance.live:
                self.networks.mark(instance.vlan, instance.network_index)

    def start_polling(self) -> None:
        for zone in self.cc.clusters:
            self._start_poller(zone)
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="compute housekeeping"))

    def _start_poller(self, zone: str) -> None:
        if zone not in self._pollers:
            self._pollers[zone] = asyncio.create_task(self._poll_loop(zone), name=f"poll {zone}")

    def zone_changed(self, zone: str, url: str | None) -> None:
        """The cluster registry added (url) or removed (None) a zone."""
        if url is None:
            task = self._pollers.pop(zone, None)
            if task is not None:
                task.cancel()
            self.admission.zones.pop(zone, None)
        else:
            self.admission.known_zone(zone)
            if self._polling:
                self._start_poller(zone)

    async def stop(self) -> None:
        self._polling = False
        tasks = self._tasks + list(self._pollers.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._pollers.clear()

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

    # --- RunInstances -----------------------------------------------------------------------------------
    async def run_instances(self, principal: Principal, request: RunRequest) -> Reservation:
        owner = principal.account_id
        if request.client_token:
            if len(request.client_token) > 64:
                raise invalid("ClientToken", "at most 64 characters")
            existing = self.store.tokens.get((owner, request.client_token))
            if existing is not None:
                return self.store.reservations[existing]
        if not 1 <= request.min_count <= request.max_count:
            raise invalid("MinCount", "MinCount must be at least 1 and not more than MaxCount")
        if request.max_count > MAX_COUNT:
            raise invalid("MaxCount", f"at most {MAX_COUNT} instances per request")
        vm = self.vm_type(request.instance_type)
        image = self.image(request.image_id, principal, "machine")
        if request.shutdown_behavior not in ("stop", "terminate"):
            raise invalid("InstanceInitiatedShutdownBehavior", "stop or terminate")
        if request.shutdown_behavior == "stop":  # instance-store roots (every root until EBS roots come)
            raise ComputeError("UnsupportedOperation", "Only an EBS-backed instance can stop when its guest shuts down")
        kernel_id = request.kernel_id or image.kernel_id or self.settings.default_kernel
        ramdisk_id = request.ramdisk_id or image.ramdisk_id or self.settings.default_ramdisk
        kernel = self.image(kernel_id, principal, "kernel", implied=not request.kernel_id) if kernel_id else None
        ramdisk = self.image(ramdisk_id, principal, "ramdisk", implied=not request.ramdisk_id) if ramdisk_id else None
        user_data = decode_user_data(request.user_data)
        groups = list(dict.fromkeys(request.groups or ["default"]))
        if len(groups) > 64:
            raise invalid("SecurityGroup", "at most 64 groups")
        if request.capacity_reservation_id and self.leases is not None and not request.zone:
            request.zone = self.leases.reservation(owner, request.capacity_reservation_id).zone
        zone = request.zone or None
        if zone is not None and zone not in self.cc.clusters:
            raise ComputeError("InvalidParameterValue", f"Invalid availability zone: [{zone}]")
        key_material = request.key_material
        if self.settings.network_resources == "auto":
            unknown = [z for z in ([zone] if zone else self.cc.clusters) if z not in self.zone_modes]
            if unknown:  # right after a start: learn the zones' network modes first
                await asyncio.gather(*(self._refresh_network_mode(z) for z in unknown))
                if request.client_token and (owner, request.client_token) in self.store.tokens:
                    return self.store.reservations[self.store.tokens[(owner, request.client_token)]]
        if self.leases is not None:  # the zones' nodes, for the slot table
            await self.leases.before_admit(owner, request, vm, zone)
        # From the quota check to the in-memory records everything is synchronous, so concurrent requests see
        # each other's reservations. When the last capacity report says there is not enough, a fresh one is
        # asked for once (it may predate nodes coming up or instances going away).
        try:
            token = self._admit(principal, request, vm, zone)
        except ComputeError as err:
            if err.code != "InsufficientInstanceCapacity" or not self.admission.stale(self.settings.fresh_report):
                raise
            await self.refresh_capacity([zone] if zone else None)
            if request.client_token and (owner, request.client_token) in self.store.tokens:
                return self.store.reservations[self.store.tokens[(owner, request.client_token)]]
            token = self._admit(principal, request, vm, zone)
        undo: list[Callable[[], None]] = [lambda: self._release_token(token)]
        try:
            count = token.count
            instance_ids = self._new_ids("i", count)
            addresses = [] if self.remote(token.zone) else self._take_addresses(owner, count, undo)
            nets = self._take_network(owner, groups, count, undo, token.zone)
            now = time.time()
            reservation = Reservation(
                self._new_ids("r", 1)[0],
                owner,
                token.zone,
                principal.user_id,
                request.client_token,
                groups,
                list(request.group_ids),
                now,
            )
            instances = [
                Instance(
                    instance_id=instance_id,
                    reservation_id=reservation.reservation_id,
                    owner_id=owner,
                    user_id=principal.user_id,
                    image_id=image.image_id,
                    kernel_id=kernel.image_id if kernel else "",
                    ramdisk_id=ramdisk.image_id if ramdisk else "",
                    vm_type=vm.name,
                    cores=vm.cores,
                    memory_mb=vm.memory_mb,
                    disk_gb=vm.disk_gb,
                    key_name=request.key_name,
                    key_material=key_material or "",
                    user_data=user_data,
                    launch_index=index,
                    zone=token.zone,
                    state="pending",
                    launch_time=now,
                    updated_at=now,
                    private_mac=mac_for(instance_id),
                    public_ip=addresses[index].public_ip if index < len(addresses) else "",
                    vlan=nets[index][0] if nets else -1,
                    network_index=nets[index][1] if nets else -1,
                    disable_api_termination=request.disable_api_termination,
                    shutdown_behavior=request.shutdown_behavior,
                )
                for index, instance_id in enumerate(instance_ids)
            ]
            for address, instance in zip(addresses, instances, strict=False):
                address.instance_id, address.association_id = instance.instance_id, ids.new_id("eipassoc")
            self.store.add_reservation(reservation, instances)
            undo.append(lambda: self._forget_in_memory(reservation))
        except BaseException:
            for step in reversed(undo):
                step()
            raise
        # Written before the CC hears of it, so a crash from here on leaves records the poller can settle.
        try:
            await self.store.save_reservation(reservation)
            if self.leases is not None:
                await self.leases.bind(token, instance_ids)
            await self.addresses.save(*addresses)
            for name in {Networks.name(owner, g) for g in groups[:1]} if nets else ():
                await self.networks.save_vlan(name)
        except Exception:
            for step in reversed(undo):
                step()
            with contextlib.suppress(Exception):
                await self.addresses.save(*addresses)
                await self.store.forget(instance_ids)
            raise
        return await self._launch(reservation, instances, token, request.min_count, image, kernel, ramdisk, vm)

    def _admit(self, principal: Principal, request: RunRequest, vm: VmType, zone: str | None) -> Token:
        """Quotas, then a capacity reservation (synchronous)."""
        max_count = request.max_count
        used, used_cores = self.live_counts(principal.account_id)
        for limit, in_use, per, what in (
            (self.settings.quota_instances, used, 1, "instances"),
            (self.settings.quota_cores, used_cores, vm.cores, "cores"),
        ):
            if limit:
                count_quota(in_use, request.min_count * per, limit, what)
                max_count = min(max_count, (limit - in_use) // per)
        if zone is None:
            token = bursting.reserve(
                self.admission, self.settings.burst, principal.account_id, vm, request.min_count, max_count
            )
        else:
            token = self.admission.reserve(principal.account_id, vm, request.min_count, max_count, zone)
        if self.leases is not None:
            try:
                self.leases.claim(principal.account_id, request, vm, token)
            except BaseException:
                self.admission.release(token)
                raise
        return token

    def _release_token(self, token: Token) -> None:
        self.admission.release(token)
        if self.leases is not None:
            self.leases.settle(token)

    def _new_ids(self, prefix: str, count: int) -> list[str]:
        taken = self.store.instances if prefix == "i" else self.store.reservations
        result: list[str] = []
        while len(result) < count:
            candidate = ids.new_id(prefix)
            if candidate not in taken and candidate not in result:
                result.append(candidate)
        return result

    def _take_addresses(self, owner: str, count: int, undo: list) -> list[Address]:
        if not (self.settings.auto_public_ip and self.addresses.pool):
            return []
        taken: list[Address] = []

        def give_back_taken() -> None:
            for address in taken:
                self.addresses.give_back(address)

        undo.append(give_back_taken)
        for _ in range(count):
            try:
                taken.append(self.addresses.take(owner, auto=True))
            except ComputeError:  # the pool is used up: as documented, an address "if any", not a refusal
                break
        return taken

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

    def _take_network(self, owner: str, groups: list[str], count: int, undo: list, zone: str) -> list[tuple[int, int]]:
        if not self.managed(zone):
            return []
        name = Networks.name(owner, groups[0])  # the instance lives in its first group's network
        vlan, new = self.networks.vlan_for(name)
        taken: list[tuple[int, int]] = []

        def give_back() -> None:
            for v, index in taken:
                self.networks.give_back(v, index)
            if new:
                self.networks.drop_vlan(name)

        undo.append(give_back)
        for _ in range(count):
            taken.append((vlan, self.networks.take_index(vlan)))
        return taken

    def _forget_in_memory(self, reservation: Reservation) -> None:
        for instance_id in reservation.instance_ids:
            instance = self.store.instances.pop(instance_id, None)
            if instance is not None:
                self.store.reindex_ip(instance)
        self.store.reservations.pop(reservation.reservation_id, None)
        self.store.tokens.pop((reservation.owner_id, reservation.client_token), None)

    async def _launch(
        self,
        reservation: Reservation,
        instances: list[Instance],
        token: Token,
        min_count: int,
        image: Image,
        kernel: Image | None,
        ramdisk: Image | None,
        vm: VmType,
    ) -> Reservation:
        try:
            return await self._send_launch(reservation, instances, token, min_count, image, kernel, ramdisk, vm)
        except PeerNotReached as err:
            # Nothing reached the CC, so nothing runs there: the launch leaves no trace, and the zone is reported
            # unavailable rather than short of capacity.
            log.warning("RunInstances %s: %s unreachable: %s", reservation.reservation_id, reservation.zone, err)
            await self._free_resources(instances)
            self.admission.release(token)
            await self.store.forget([i.instance_id for i in instances])
            raise ComputeError(
                "Unsupported",
                f"The requested Availability Zone ({reservation.zone}) is currently unavailable. "
                "Retry later, or choose another Availability Zone.",
            ) from None

    async def _send_launch(
        self,
        reservation: Reservation,
        instances: list[Instance],
        token: Token,
        min_count: int,
        image: Image,
        kernel: Image | None,
        ramdisk: Image | None,
        vm: VmType,
    ) -> Reservation:
        first = instances[0]
        if self.netsync is not None and first.vlan >= 0:
            try:  # the network's rules reach the CC before its first instance does
                await self.netsync.configure_launch(
                    reservation.zone, reservation.owner_id, reservation.groups, first.vlan
                )
            except ComputeError:
                await self._fail(reservation, instances, token, "Server.InternalError: network setup failed")
                raise
        request = RunInstancesRequest(
            reservation_id=reservation.reservation_id,
            owner_id=reservation.owner_id,
            instances=[
                InstanceLaunch(
                    instance_id=i.instance_id,
                    launch_index=i.launch_index,
                    net=NetConfig(
                        private_mac=i.private_mac, public_ip=i.public_ip, vlan=i.vlan, network_index=i.network_index
                    ),
                    node_id=token.nodes[n] if len(token.nodes) == len(instances) else "",
                )
                for n, i in enumerate(instances)
            ],
            min_count=min_count,
            image=ImageRef(id=image.image_id, manifest=image.location),
            kernel=ImageRef(id=kernel.image_id, manifest=kernel.location) if kernel else None,
            ramdisk=ImageRef(id=ramdisk.image_id, manifest=ramdisk.location) if ramdisk else None,
            vm_type=vm,
            key_name=first.key_name,
            ssh_public_key=first.key_material,
            user_data=first.user_data,
            group_names=reservation.groups,
        )
        try:
            answer = await self.cc.run_instances(reservation.zone, request)
        except PeerNotReached:
            raise
        except (RpcError, PeerUnreachable) as err:
            log.warning("RunInstances %s failed in %s: %s", reservation.reservation_id, reservation.zone, err)
            await self._fail(reservation, instances, token, f"Server.InternalError: {err.code}")
            # The CC may have started some before failing (e.g. a timeout): make sure they go.
            self.background(self._terminate_quietly(reservation.zone, [i.instance_id for i in instances]))
            raise ComputeError(
                "InsufficientInstanceCapacity",
                f"The cluster {reservation.zone} could not start the instances: {err.message}",
                503,
            ) from None
        placed = {p.instance_id for p in answer.instances if p.node_id and not p.error}
        failed = [i for i in instances if i.instance_id not in placed]
        if len(placed) < min_count:
            reason = next((p.error for p in answer.instances if p.error), "no node could take them")
            await self._fail(reservation, instances, token, f"Server.InsufficientInstanceCapacity: {reason}")
            raise ComputeError(
                "InsufficientInstanceCapacity",
                f"Not enough resources available in {reservation.zone}: {reason}",
                503,
            )
        nodes = {p.instance_id: p.node_id for p in answer.instances}
        for instance in instances:
            instance.node_id = nodes.get(instance.instance_id, "")
        if failed:
            self.admission.shrink(token, len(placed))
            await self._release_instances(failed, "Server.InsufficientInstanceCapacity: not placed")
        self.admission.submitted(token)
        await self.store.save_instances([i for i in instances if i.node_id])
        if self.leases is not None:
            self.leases.settle(token)
        self._schedule_refresh(reservation.zone)
        log.info("launched %s: %d x %s in %s", reservation.reservation_id, len(placed), vm.name, reservation.zone)
        return reservation

    async def _fail(self, reservation: Reservation, instances: list[Instance], token: Token, reason: str) -> None:
        """Undo a launch the CC refused, in reverse order: instances, network, addresses, capacity. A failed
        request does not use up its ClientToken (a client's retry must launch, not return the failure)."""
        await self._release_instances(instances, reason)
        self._release_token(token)
        await self.store.release_token(reservation)

    async def _release_instances(self, instances: list[Instance], reason: str) -> None:
        now = time.time()
        for instance in instances:
            self.store.set_state(instance, "terminated", reason, now)
        await self._free_resources(instances)
        await self.store.save_instances(instances)

    async def _free_resources(self, instances: list[Instance]) -> None:
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

    async def _terminate_quietly(self, zone: str, instance_ids: list[str]) -> None:
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
            await self._free_resources(gone)
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
            await self._free_resources(changed)
            await self.store.save_instances(changed)
            self._changed(changed)

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
                self._changed(changed)
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

    # --- state from the CCs -----------------------------------------------------------------------------
    async def notify(self, message: NotifyInstancesRequest) -> Ack:
        """A CC's push (role cc, checked by the caller to speak for the zone): the instances whose state
        changed, or all of them when `full`."""
        if message.zone not in self.cc.clusters:
            raise RpcError(403, "UnknownZone", f"zone {message.zone!r} is not one of this cloud's clusters")
        await self.apply_report(message.zone, message.instances, message.full)
        return Ack()

    async def apply_report(self, zone: str, reported: list[ClusterInstance], full: bool) -> list[Instance]:
        now = time.time()
        changed: list[Instance] = []
        ended: list[Instance] = []
        seen: set[str] = set()
        for item in reported:
            instance = self.store.instances.get(item.instance_id)
            if instance is None or instance.zone != zone:
                continue  # not ours (the CC's own orphans are its business)
            seen.add(instance.instance_id)
            instance.last_seen = now
            dirty = False
            if item.node_id and item.node_id != instance.node_id:
                instance.node_id, dirty = item.node_id, True
            if item.net.private_ip and item.net.private_ip != instance.private_ip:
                old, instance.private_ip, dirty = instance.private_ip, item.net.private_ip, True
                self.store.reindex_ip(instance, old)
            if item.net.public_ip and not instance.public_ip:
                instance.public_ip, dirty = item.net.public_ip, True
            state = CC_STATES.get(item.state)
            if state == "running" and item.detail == "suspended":
                state = "stopped"  # saved to disk on its node (a suspended spot instance, or the admin's doing)
            elif item.detail in ("suspending", "resuming"):
                state = None  # on its way: the CC's answer to the call, or the next report, settles it
            if state is not None and state != instance.state:
                if state == "pending" and instance.state != "pending":
                    pass  # an old report; never go backwards
                elif state == "running" and instance.state == "shutting-down":
                    pass  # terminating: wait for Teardown
                else:
                    # A user's termination stays the reason, whatever words the CC uses for the teardown.
                    user = instance.state == "shutting-down" and instance.state_reason == "User initiated"
                    reason = "User initiated" if user else item.reason
                    if self.store.set_state(instance, state, reason, now):
                        dirty = True
                        if state == "terminated":
                            ended.append(instance)
            if dirty:
                changed.append(instance)
        if full:
            for instance in self.store.instances.values():
                if instance.zone != zone or not instance.live or instance.instance_id in seen:
                    continue
                if instance.state == "shutting-down":
                    self.store.set_state(instance, "terminated", "User initiated", now)
                elif now - max(instance.last_seen, instance.launch_time) > self.settings.lost_after:
                    # The CC has not reported it for the whole grace period: it is gone.
                    self.store.set_state(instance, "terminated", "Server.InternalError: lost by the cluster", now)
                else:
                    continue
                ended.append(instance)
                changed.append(instance)
        if ended:
            await self._free_resources(ended)
            for ended_zone in {i.zone for i in ended}:
                self._schedule_refresh(ended_zone)  # the CC gave their capacity back before it told us
        if changed:
            await self.store.save_instances(changed)
            self._changed(changed)
        return changed

    def _changed(self, instances: list[Instance]) -> None:
        for listener in self.on_change:
            try:
                listener(instances)
            except Exception:  # a listener never breaks state handling
                log.exception("state listener failed")

    # --- polling: the safety net ------------------------------------------------------------------------
    async def refresh_capacity(self, zones: list[str] | None = None) -> None:
        await asyncio.gather(*(self._refresh_zone(z) for z in (zones or list(self.cc.clusters))))

    async def _refresh_zone(self, zone: str) -> None:
        sent_at = self.admission.clock()
        try:
            report = await self.cc.describe_resources(zone, self.vmtypes.list())
        except (RpcError, PeerUnreachable) as err:
            log.debug("DescribeResources %s failed: %s", zone, err)
            self.admission.unreachable(zone)
            return
        self.admission.update(report, sent_at, zone)

    def _schedule_refresh(self, zone: str) -> None:
        if zone in self._refresh_pending:
            return
        self._refresh_pending.add(zone)

        async def later() -> None:
            try:
                await asyncio.sleep(0.05)  # one refresh for a burst of launches
            finally:
                self._refresh_pending.discard(zone)
            await self._refresh_zone(zone)

        self.background(later())

    def background(self, coroutine) -> None:
        """Run a coroutine as a task the engine owns (cancelled at stop; a failure is logged, never lost)."""
        task = asyncio.create_task(coroutine)
        self._tasks.append(task)

        def done(finished: asyncio.Task) -> None:
            if finished in self._tasks:
                self._tasks.remove(finished)
            if not finished.cancelled() and finished.exception() is not None:
                log.error("background task failed", exc_info=finished.exception())

        task.add_done_callback(done)

    async def poll_zone(self, zone: str) -> None:
        await self._refresh_zone(zone)
        await self.elastic.refresh_pool(zone)
        await self._refresh_network_mode(zone)
        try:
            answer = await self.cc.describe_instances(zone)
        except (RpcError, PeerUnreachable) as err:
            log.debug("DescribeInstances %s failed: %s", zone, err)
            return
        await self.apply_report(zone, answer.instances, full=True)
        stuck = [i.instance_id for i in self.store.instances.values() if i.zone == zone and i.state == "shutting-down"]
        # Live at the CC but terminated here (e.g. its launch failed on a timeout or a CC crash): it must go too.
        stuck += [
            item.instance_id
            for item in answer.instances
            if item.state in ("Pending", "Extant")
            and (known := self.store.instances.get(item.instance_id)) is not None
            and known.zone == zone
            and known.state == "terminated"
        ]
        if stuck:
            await self._terminate_quietly(zone, stuck)

    async def _refresh_network_mode(self, zone: str) -> None:
        try:
            # The mode and limits, not every network.
            answer = await self.cc.describe_networks(zone, DescribeNetworksRequest(names=["koala-none"]))
        except (RpcError, PeerUnreachable):
            return
        self.zone_modes[zone] = answer.mode
        if answer.mode.startswith("MANAGED") and answer.vlan_max:
            self.networks.vlan_min = max(self.networks.vlan_min, answer.vlan_min)
            self.networks.vlan_max = min(self.networks.vlan_max, answer.vlan_max)
            self.networks.addrs_per_net = answer.addrs_per_net or self.networks.addrs_per_net

    async def _poll_loop(self, zone: str) -> None:
        while True:
            try:
                await self.poll_zone(zone)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("polling %s failed", zone)
            await asyncio.sleep(self.settings.poll_interval)

    async def housekeeping(self) -> None:
        self.admission.expire()
        limit = time.time() - self.settings.terminated_visible
        buried = [
            i.instance_id
            for i in self.store.instances.values()
            if i.state == "terminated" and i.terminated_at and i.terminated_at < limit
        ]
        if buried:
            await self.store.forget(buried)
            for listener in self.on_forget:
                try:
                    await listener(buried)
                except Exception:
                    log.exception("forget listener failed")

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(min(self.settings.poll_interval, 30.0))
            try:
                await self.housekeeping()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("housekeeping failed")
