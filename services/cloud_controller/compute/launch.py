"""Launches: RunInstances from the request to the CC's answer. Checks (image, type, counts, zone), admission (quotas,
then a capacity reservation, synchronous so concurrent requests see each other), addresses and the network
taken, records written before the CC hears of the launch, the CC call, and the rollback when it fails.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from common import ids
from common.messages.cc_nc import MAX_USER_DATA, VmType
from common.messages.clc_cc import RunInstancesRequest
from common.rpc import PeerNotReached, PeerUnreachable, RpcError
from services.cloud_controller.compute import bursting
from services.cloud_controller.compute.addresses import Address, Addresses
from services.cloud_controller.compute.admission import Admission, Token, count_quota
from services.cloud_controller.compute.capacity import CapacityRefresh
from services.cloud_controller.compute.cc_client import ClusterClient
from services.cloud_controller.compute.errors import ComputeError, invalid
from services.cloud_controller.compute.networks import Networks
from services.cloud_controller.compute.run_request import run_request
from services.cloud_controller.compute.store import Image, Instance, Reservation, Store

if TYPE_CHECKING:
    from services.cloud_controller.compute.engine import Principal, Settings
    from services.cloud_controller.compute.netsync import NetworkSync
    from services.cloud_controller.ebs.roots import Roots
    from services.cloud_controller.leases.scheduler import LeaseScheduler

log = logging.getLogger("koala.clc.compute")
MAX_COUNT = 1000  # instances per RunInstances request


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
    block_devices: list[dict[str, Any]] = field(default_factory=list)  # BlockDeviceMappings, parsed by ebs/roots.py


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


@dataclass
class Launch:
    """A launch on its way to the CC: its records (written before the CC hears of them), the capacity held for
    it and what the CC needs to start it."""

    reservation: Reservation
    instances: list[Instance]
    token: Token
    min_count: int
    image: Image
    kernel: Image | None
    ramdisk: Image | None
    vm: VmType


class LaunchEngine(Protocol):
    """What a launch asks of the engine it is part of (engine.Compute): its lookups, what the parts share, and
    the parts other packages install later (None until then)."""

    zone_modes: dict[str, str]
    leases: LeaseScheduler | None
    roots: Roots | None
    netsync: NetworkSync | None

    def vm_type(self, name: str) -> VmType: ...
    def image(self, image_id: str, principal: Principal, kind: str | None = None, implied: bool = False) -> Image: ...
    def live_counts(self, owner_id: str) -> tuple[int, int]: ...
    def managed(self, zone: str) -> bool: ...
    def remote(self, zone: str) -> bool: ...
    async def free_resources(self, instances: list[Instance]) -> None: ...
    def background(self, coroutine: Coroutine[Any, Any, Any]) -> None: ...
    async def terminate_quietly(self, zone: str, instance_ids: list[str]) -> None: ...


class Launcher:
    """RunInstances: the engine's records (`store`) by its `settings`, capacity from `admission` (refreshed by
    `capacity`), public `addresses` and `networks` taken, the zones' network modes read by `network_mode`, the
    call through the CC client (`cc`)."""

    def __init__(
        self,
        engine: LaunchEngine,
        store: Store,
        settings: Settings,
        cc: ClusterClient,
        admission: Admission,
        networks: Networks,
        addresses: Addresses,
        capacity: CapacityRefresh,
        network_mode: Callable[[str], Awaitable[None]],
    ):
        self.engine, self.store, self.settings, self.cc = engine, store, settings, cc
        self.admission, self.networks, self.addresses = admission, networks, addresses
        self.capacity, self.network_mode = capacity, network_mode

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
        vm = self.engine.vm_type(request.instance_type)
        image = self.engine.image(request.image_id, principal, "machine")
        if request.shutdown_behavior not in ("stop", "terminate"):
            raise invalid("InstanceInitiatedShutdownBehavior", "stop or terminate")
        if request.shutdown_behavior == "stop" and image.root_device_type != "ebs":
            raise ComputeError("UnsupportedOperation", "Only an EBS-backed instance can stop when its guest shuts down")
        mappings: list[dict[str, Any]] = []
        if image.root_device_type == "ebs" or request.block_devices:
            if self.engine.roots is None:
                raise ComputeError("UnsupportedOperation", "This cloud has no block storage for EBS volumes")
            mappings = self.engine.roots.mappings(principal, image, request.block_devices)
        kernel_id = request.kernel_id or image.kernel_id or self.settings.default_kernel
        ramdisk_id = request.ramdisk_id or image.ramdisk_id or self.settings.default_ramdisk
        kernel = self.engine.image(kernel_id, principal, "kernel", implied=not request.kernel_id) if kernel_id else None
        ramdisk = (
            self.engine.image(ramdisk_id, principal, "ramdisk", implied=not request.ramdisk_id) if ramdisk_id else None
        )
        user_data = decode_user_data(request.user_data)
        groups = list(dict.fromkeys(request.groups or ["default"]))
        if len(groups) > 64:
            raise invalid("SecurityGroup", "at most 64 groups")
        if request.capacity_reservation_id and self.engine.leases is not None and not request.zone:
            request.zone = self.engine.leases.reservation(owner, request.capacity_reservation_id).zone
        zone = request.zone or None
        if zone is not None and zone not in self.cc.clusters:
            raise ComputeError("InvalidParameterValue", f"Invalid availability zone: [{zone}]")
        key_material = request.key_material
        if self.settings.network_resources == "auto":
            unknown = [z for z in ([zone] if zone else self.cc.clusters) if z not in self.engine.zone_modes]
            if unknown:  # right after a start: learn the zones' network modes first
                await asyncio.gather(*(self.network_mode(z) for z in unknown))
                if request.client_token and (owner, request.client_token) in self.store.tokens:
                    return self.store.reservations[self.store.tokens[(owner, request.client_token)]]
        if self.engine.leases is not None:  # the zones' nodes, for the slot table
            await self.engine.leases.before_admit(owner, request, vm, zone)
        # From the quota check to the in-memory records everything is synchronous, so concurrent requests see
        # each other's reservations. When the last capacity report says there is not enough, a fresh one is
        # asked for once (it may predate nodes coming up or instances going away).
        try:
            token = self.admit(principal, request, vm, zone)
        except ComputeError as err:
            if err.code != "InsufficientInstanceCapacity" or not self.admission.stale(self.settings.fresh_report):
                raise
            await self.capacity.refresh_capacity([zone] if zone else None)
            if request.client_token and (owner, request.client_token) in self.store.tokens:
                return self.store.reservations[self.store.tokens[(owner, request.client_token)]]
            token = self.admit(principal, request, vm, zone)
        undo: list[Callable[[], None]] = [lambda: self.release_token(token)]
        try:
            count = token.count
            instance_ids = self._new_ids("i", count)
            addresses = [] if self.engine.remote(token.zone) else self.take_addresses(owner, count, undo)
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
                    root_device_type=image.root_device_type,
                    root_device_name=image.root_device_name,
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
            if self.engine.leases is not None:
                await self.engine.leases.bind(token, instance_ids)
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
        if mappings and self.engine.roots is not None:  # (mappings only where there is block storage)
            try:  # their volumes, made (from snapshots) before the CC hears of the instances
                await self.engine.roots.prepare(principal, instances, mappings)
            except ComputeError:
                await self._fail(reservation, instances, token, "Server.InternalError: volumes not made")
                raise
        return await self._launch(Launch(reservation, instances, token, request.min_count, image, kernel, ramdisk, vm))

    def admit(self, principal: Principal, request: RunRequest, vm: VmType, zone: str | None) -> Token:
        """Quotas, then a capacity reservation (synchronous)."""
        max_count = request.max_count
        used, used_cores = self.engine.live_counts(principal.account_id)
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
        if self.engine.leases is not None:
            try:
                self.engine.leases.claim(principal.account_id, request, vm, token)
            except BaseException:
                self.admission.release(token)
                raise
        return token

    def release_token(self, token: Token) -> None:
        self.admission.release(token)
        if self.engine.leases is not None:
            self.engine.leases.settle(token)

    def _new_ids(self, prefix: str, count: int) -> list[str]:
        taken = self.store.instances if prefix == "i" else self.store.reservations
        result: list[str] = []
        while len(result) < count:
            candidate = ids.new_id(prefix)
            if candidate not in taken and candidate not in result:
                result.append(candidate)
        return result

    def take_addresses(self, owner: str, count: int, undo: list[Callable[[], None]]) -> list[Address]:
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

    def _take_network(
        self, owner: str, groups: list[str], count: int, undo: list[Callable[[], None]], zone: str
    ) -> list[tuple[int, int]]:
        if not self.engine.managed(zone):
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

    async def _launch(self, launch: Launch) -> Reservation:
        reservation, instances, token = launch.reservation, launch.instances, launch.token
        try:
            return await self._send_launch(launch)
        except PeerNotReached as err:
            # Nothing reached the CC, so nothing runs there: the launch leaves no trace, and the zone is reported
            # unavailable rather than short of capacity.
            log.warning("RunInstances %s: %s unreachable: %s", reservation.reservation_id, reservation.zone, err)
            await self.engine.free_resources(instances)
            self.admission.release(token)
            await self.store.forget([i.instance_id for i in instances])
            raise ComputeError(
                "Unsupported",
                f"The requested Availability Zone ({reservation.zone}) is currently unavailable. "
                "Retry later, or choose another Availability Zone.",
            ) from None

    async def _send_launch(self, launch: Launch) -> Reservation:
        reservation, instances, token, vm = launch.reservation, launch.instances, launch.token, launch.vm
        image, kernel, ramdisk = launch.image, launch.kernel, launch.ramdisk
        first = instances[0]
        if self.engine.netsync is not None and first.vlan >= 0:
            try:  # the network's rules reach the CC before its first instance does
                await self.engine.netsync.configure_launch(
                    reservation.zone, reservation.owner_id, reservation.groups, first.vlan
                )
            except ComputeError:
                await self._fail(reservation, instances, token, "Server.InternalError: network setup failed")
                raise
        hints = token.nodes if len(token.nodes) == len(instances) else []
        request = self._request(reservation, instances, (image, kernel, ramdisk), vm, launch.min_count, hints)
        try:
            answer = await self.cc.run_instances(reservation.zone, request)
        except PeerNotReached:
            raise
        except (RpcError, PeerUnreachable) as err:
            log.warning("RunInstances %s failed in %s: %s", reservation.reservation_id, reservation.zone, err)
            await self._fail(reservation, instances, token, f"Server.InternalError: {err.code}")
            # The CC may have started some before failing (e.g. a timeout): make sure they go.
            self.engine.background(self.engine.terminate_quietly(reservation.zone, [i.instance_id for i in instances]))
            raise ComputeError(
                "InsufficientInstanceCapacity",
                f"The cluster {reservation.zone} could not start the instances: {err.message}",
                503,
            ) from None
        placed = {p.instance_id for p in answer.instances if p.node_id and not p.error}
        failed = [i for i in instances if i.instance_id not in placed]
        if len(placed) < launch.min_count:
            reason = next((p.error for p in answer.instances if p.error), "no node could take them")
            await self._fail(reservation, instances, token, f"Server.InsufficientInstanceCapacity: {reason}")
            code, _, detail = reason.partition(": ")
            if code.startswith("InvalidAMIID."):  # a remote zone without the image: the image's error, not capacity
                raise ComputeError(code, f"{detail} (availability zone {reservation.zone})")
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
        if self.engine.leases is not None:
            self.engine.leases.settle(token)
        self.capacity.schedule_refresh(reservation.zone)
        log.info("launched %s: %d x %s in %s", reservation.reservation_id, len(placed), vm.name, reservation.zone)
        return reservation

    def _request(
        self,
        reservation: Reservation,
        instances: list[Instance],
        images: tuple[Image, Image | None, Image | None],
        vm: VmType,
        min_count: int,
        nodes: list[str],
    ) -> RunInstancesRequest:
        """The CC's RunInstances for a reservation's instances (`nodes`: admission's placement hints, or none)."""
        image, kernel, ramdisk = images
        return run_request(
            reservation.reservation_id,
            instances,
            (image.ref(), kernel.ref() if kernel else None, ramdisk.ref() if ramdisk else None),
            vm,
            reservation.groups,
            self.engine.roots,
            min_count=min_count,
            nodes=nodes,
        )

    async def resend_unsent(self) -> int:
        """At start (a standby taking over, a restart): the launches the previous process wrote but whose CC answer
        it never recorded (instances `pending` with no node, not a StartInstances run, younger than `lost_after`)
        are sent again, one RunInstances per reservation under its own id. A CC that already has the reservation
        answers with what it decided then (cluster.Cluster.run_instances), so a launch that reached it is not
        started twice; one that never did starts now instead of ending lost. How many instances were sent."""
        now = time.time()
        unsent: dict[str, list[Instance]] = {}
        for instance in self.store.instances.values():
            if (
                instance.state == "pending"
                and not instance.node_id
                and not instance.launch_id
                and now - instance.launch_time < self.settings.lost_after
            ):
                unsent.setdefault(instance.reservation_id, []).append(instance)
        sent = 0
        for reservation_id, instances in unsent.items():
            reservation = self.store.reservations.get(reservation_id)
            if reservation is None:
                continue
            try:
                sent += await self._resend(reservation, sorted(instances, key=lambda i: i.launch_index))
            except (RpcError, PeerUnreachable, ComputeError) as err:  # left as they are: lost after the timeout
                log.warning("RunInstances %s not sent again: %s", reservation_id, err)
        return sent

    async def _resend(self, reservation: Reservation, instances: list[Instance]) -> int:
        first = instances[0]
        images = self.store.images
        image = images.get(first.image_id)
        kernel = images.get(first.kernel_id) if first.kernel_id else None
        ramdisk = images.get(first.ramdisk_id) if first.ramdisk_id else None
        roots = self.engine.roots
        volumes = roots.boot_volumes([i.instance_id for i in instances]) if roots is not None else {}
        if image is None or any(i.root_device_type == "ebs" and i.instance_id not in volumes for i in instances):
            log.warning("RunInstances %s: its image or volumes are gone; not sent again", reservation.reservation_id)
            return 0
        if self.engine.netsync is not None and first.vlan >= 0:
            await self.engine.netsync.configure_launch(
                reservation.zone, reservation.owner_id, reservation.groups, first.vlan
            )
        vm = self.engine.vm_type(first.vm_type)
        request = self._request(reservation, instances, (image, kernel, ramdisk), vm, 1, [])
        answer = await self.cc.run_instances(reservation.zone, request)
        nodes = {p.instance_id: p.node_id for p in answer.instances if p.node_id and not p.error}
        for instance in instances:
            instance.node_id = nodes.get(instance.instance_id, "")
        failed = [i for i in instances if not i.node_id]
        if failed:
            await self._release_instances(failed, "Server.InsufficientInstanceCapacity: not placed when sent again")
        await self.store.save_instances([i for i in instances if i.node_id])
        self.capacity.schedule_refresh(reservation.zone)
        log.info(
            "sent again %s (written, never answered): %d of %d placed in %s",
            reservation.reservation_id,
            len(nodes),
            len(instances),
            reservation.zone,
        )
        return len(instances)

    async def _fail(self, reservation: Reservation, instances: list[Instance], token: Token, reason: str) -> None:
        """Undo a launch the CC refused, in reverse order: instances, network, addresses, capacity. A failed
        request does not use up its ClientToken (a client's retry must launch, not return the failure)."""
        await self._release_instances(instances, reason)
        self.release_token(token)
        await self.store.release_token(reservation)

    async def _release_instances(self, instances: list[Instance], reason: str) -> None:
        now = time.time()
        for instance in instances:
            self.store.set_state(instance, "terminated", reason, now)
        await self.engine.free_resources(instances)
        await self.store.save_instances(instances)
