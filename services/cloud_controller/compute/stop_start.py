"""StopInstances and StartInstances of EBS-backed instances.

Stop: `stopping` is written, then the CC is asked to end the instance's run (its domain goes; its volumes stay
attached in the CLC's books, the CC's exports of them go with the run); when the CC reports the run over the
instance is `stopped`. It keeps its private address, network index and public address. A guest that powers itself
off stops instead of terminating when its InstanceInitiatedShutdownBehavior is stop.

Start: capacity is reserved in the instance's zone, `pending` and a new run id (`launch_id`, the CC reservation of
this run) are written, then the CC is sent a RunInstances of that one instance with its volumes, which it places on
any node that fits (not necessarily the one before). Reports about an earlier run carry the old id and are ignored.

Both are level-triggered: `reconcile` (from each zone's poll) sends a stop again while `stopping`, and a start again
while the instance is `pending` with no node, so a CLC or CC crash at any point converges.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from common import ids
from common.messages.cc_nc import ImageRef, VmType
from common.messages.clc_cc import RunInstancesRequest
from common.rpc import PeerUnreachable, RpcError
from services.cloud_controller.compute.admission import Admission
from services.cloud_controller.compute.cc_client import ClusterClient
from services.cloud_controller.compute.errors import ComputeError
from services.cloud_controller.compute.run_request import run_request
from services.cloud_controller.compute.store import Instance, Store

if TYPE_CHECKING:
    from services.cloud_controller.compute.engine import Principal
    from services.cloud_controller.compute.netsync import NetworkSync
    from services.cloud_controller.ebs.roots import Roots

log = logging.getLogger("koala.clc.compute")
RESEND_AFTER = 5.0  # seconds a start or stop the CC has not acted on waits before it is sent again
STOPPED_BY_USER = "User initiated"
STOPPED_BY_GUEST = "Client.InstanceInitiatedShutdown: Instance initiated shutdown"


def not_ebs(instance: Instance) -> ComputeError:
    return ComputeError(
        "UnsupportedOperation",
        f"The instance '{instance.instance_id}' does not have an 'ebs' root device type and cannot be stopped.",
    )


class StopStartEngine(Protocol):
    """What stopping and starting ask of the engine they are part of (engine.Compute), and the parts other
    packages install later (None until then)."""

    roots: Roots | None
    netsync: NetworkSync | None

    def instances(self, instance_ids: list[str], principal: Principal) -> list[Instance]: ...
    def vm_type(self, name: str) -> VmType: ...
    def changed(self, instances: list[Instance]) -> None: ...


class StopStart:
    """Stops and starts of EBS-backed instances: the engine's records (`store`), capacity from `admission`, the
    calls through the CC client (`cc`)."""

    def __init__(self, engine: StopStartEngine, store: Store, cc: ClusterClient, admission: Admission):
        self.engine, self.store, self.cc, self.admission = engine, store, cc, admission

    # --- what the reports mean ----------------------------------------------------------------------------
    @staticmethod
    def stops(instance: Instance, detail: str) -> bool:
        """A run that ended is a stop (not a termination): one asked for, or the guest's own power-off when its
        shutdown behaviour is stop."""
        if instance.root_device_type != "ebs":
            return False
        if instance.state in ("stopping", "stopped"):  # stopped: a repeated report of the run's end
            return True
        if instance.state == "pending" and instance.launch_id:
            return True  # a start that failed: stopped again, its volumes kept (never terminated for it)
        return instance.state == "running" and instance.shutdown_behavior == "stop" and detail == "shutoff"

    @staticmethod
    def reason(instance: Instance, why: str = "") -> str:
        if instance.state == "pending":
            return f"Server.InternalError: the start failed: {why}"[:255]
        return STOPPED_BY_USER if instance.state == "stopping" else STOPPED_BY_GUEST

    # --- StopInstances ------------------------------------------------------------------------------------
    async def stop(self, principal: Principal, instance_ids: list[str]) -> list[tuple[Instance, str]]:
        instances = self.engine.instances(instance_ids, principal)
        for instance in instances:  # every check first: nothing happens to any when one is refused
            if instance.root_device_type != "ebs":
                raise not_ebs(instance)
            if instance.state in ("terminated", "shutting-down"):
                raise ComputeError(
                    "IncorrectInstanceState",
                    f"This instance '{instance.instance_id}' is not in a state from which it can be stopped.",
                )
        result = [(i, i.state) for i in instances]
        await self.stop_now(instances)
        return result

    async def stop_now(self, instances: list[Instance], reason: str = STOPPED_BY_USER) -> None:
        """Stop these (checked) instances: `stopping` written, then the CC asked to end their runs."""
        now = time.time()
        acting = [i for i in instances if self.store.set_state(i, "stopping", reason, now)]
        await self.store.save_instances(acting)  # written before the CC hears of it
        self.engine.changed(acting)
        by_zone: dict[str, list[Instance]] = {}
        for instance in acting:
            by_zone.setdefault(instance.zone, []).append(instance)
        for zone, zone_instances in by_zone.items():
            await self._send_stop(zone, zone_instances)

    async def _send_stop(self, zone: str, instances: list[Instance]) -> None:
        try:
            answer = await self.cc.terminate_instances(zone, [i.instance_id for i in instances])
        except (RpcError, PeerUnreachable) as err:
            log.warning("stop in %s not answered (will retry): %s", zone, err)
            return
        known = set(answer.instance_ids)
        gone = [i for i in instances if i.instance_id not in known]  # no run at the CC: stopped already
        now = time.time()
        gone = [i for i in gone if i.state == "stopping" and self.store.set_state(i, "stopped", "", now)]
        if gone:
            await self.store.save_instances(gone)
            self.engine.changed(gone)

    # --- StartInstances -----------------------------------------------------------------------------------
    async def start(self, principal: Principal, instance_ids: list[str]) -> list[tuple[Instance, str]]:
        instances = self.engine.instances(instance_ids, principal)
        for instance in instances:
            if instance.root_device_type != "ebs":
                raise ComputeError(
                    "UnsupportedOperation",
                    f"The instance '{instance.instance_id}' does not have an 'ebs' root device type and cannot be "
                    "started.",
                )
            if instance.state not in ("stopped", "pending", "running"):
                raise ComputeError(
                    "IncorrectInstanceState",
                    f"The instance '{instance.instance_id}' is not in a state from which it can be started.",
                )
            if (
                instance.state == "stopped"
                and self.engine.roots is not None
                and not self.engine.roots.has_root(instance)
            ):
                raise ComputeError(
                    "IncorrectInstanceState", f"The instance '{instance.instance_id}' has no volume at its root device."
                )
            if self.engine.roots is not None and self.engine.roots.imaging(instance.instance_id):
                raise ComputeError(
                    "IncorrectInstanceState",
                    f"The instance '{instance.instance_id}' is down for CreateImage; it starts again after it.",
                )
        result = [(i, i.state) for i in instances]
        for instance in [i for i in instances if i.state == "stopped"]:
            await self.start_now(instance)
        return result

    async def start_now(self, instance: Instance) -> None:
        """Start this stopped (checked) instance: capacity reserved, `pending` and a new run written, the CC asked."""
        vm = self.engine.vm_type(instance.vm_type)
        token = self.admission.reserve(instance.owner_id, vm, 1, 1, instance.zone)
        now = time.time()
        self.store.set_state(instance, "pending", "", now)
        instance.state_reason = ""
        instance.launch_id, instance.node_id, instance.last_seen = self._new_run_id(), "", now
        try:
            await self.store.save_instances([instance])  # written before the CC hears of it
        except BaseException:
            self.admission.release(token)
            raise
        self.engine.changed([instance])
        await self._send_start(instance, token)

    def _new_run_id(self) -> str:
        taken = self.store.reservations
        while True:
            candidate = ids.new_id("r")
            if candidate not in taken:
                return candidate

    def _launch_request(self, instance: Instance) -> RunInstancesRequest:
        reservation = self.store.reservations.get(instance.reservation_id)
        images = self.store.images

        def ref(image_id: str) -> ImageRef | None:
            image = images.get(image_id) if image_id else None
            if image is not None:
                return image.ref()
            return ImageRef(id=image_id, manifest="") if image_id else None

        image = ref(instance.image_id)
        assert image is not None
        return run_request(
            instance.run_id,
            [instance],
            (image, ref(instance.kernel_id), ref(instance.ramdisk_id)),
            self.engine.vm_type(instance.vm_type),
            reservation.groups if reservation else [],
            self.engine.roots,
            keep_private_ip=True,
        )

    async def _send_start(self, instance: Instance, token: Any = None) -> None:
        try:
            if (
                self.engine.netsync is not None
                and instance.vlan >= 0
                and (reservation := self.store.reservations.get(instance.reservation_id))
            ):
                await self.engine.netsync.configure(
                    instance.zone, instance.owner_id, reservation.groups[0], instance.vlan
                )
            answer = await self.cc.run_instances(instance.zone, self._launch_request(instance))
        except (RpcError, PeerUnreachable, ComputeError) as err:
            # Perhaps it reached the CC: the same run id is sent again by `reconcile` until the CC answers.
            log.warning("%s: start in %s not answered (will retry): %s", instance.instance_id, instance.zone, err)
            if token is not None:
                self.admission.release(token)
            return
        placement = next((p for p in answer.instances if p.instance_id == instance.instance_id), None)
        if placement is None or not placement.node_id or placement.error:
            why = placement.error if placement is not None and placement.error else "no node could take it"
            if token is not None:
                self.admission.release(token)
            if instance.state == "pending" and self.store.set_state(
                instance, "stopped", f"Server.InsufficientInstanceCapacity: {why}"
            ):
                await self.store.save_instances([instance])
                self.engine.changed([instance])
            return
        if token is not None:
            self.admission.submitted(token)
        instance.node_id = placement.node_id
        await self.store.save_instances([instance])
        self.engine.changed([instance])
        log.info("%s: started on %s (run %s)", instance.instance_id, placement.node_id, instance.run_id)

    # --- the safety net -----------------------------------------------------------------------------------
    async def reconcile(self, zone: str) -> None:
        """Stops and starts the CC has not acted on are sent again."""
        now = time.time()
        stale = [
            i
            for i in self.store.instances.values()
            if i.zone == zone and i.root_device_type == "ebs" and now - i.updated_at > RESEND_AFTER
        ]
        stopping = [i for i in stale if i.state == "stopping"]
        if stopping:
            await self._send_stop(zone, stopping)
        for instance in stale:
            if instance.state == "pending" and instance.launch_id and not instance.node_id:
                await self._send_start(instance)
