"""Wires the lease scheduler into the CLC: its store (leases.db), the slot table beside the compute engine's
admission, the spot queue and the scheduler's tick."""

from __future__ import annotations

from typing import TYPE_CHECKING

from common import ids
from common.messages.leases_admin import InstanceRef, InstanceStateResponse
from common.rpc import Caller, RpcError
from services.cloud_controller.leases.scheduler import LeaseScheduler
from services.cloud_controller.leases.store import LeaseStore

if TYPE_CHECKING:
    from services.cloud_controller.service import CloudControllerService


async def install(clc: CloudControllerService) -> LeaseScheduler:
    """Call from the service's on_start, after the compute engine is installed (before the port opens)."""
    store = await LeaseStore.open(clc.config.KOALA_STATE_DIR, clc.config.KOALA_DATABASE_URL, clc.leadership)
    config = clc.config
    scheduler = LeaseScheduler(
        clc.compute, store, tick=config.KOALA_LEASE_TICK_SECONDS, spot_notice=config.KOALA_SPOT_NOTICE_SECONDS
    )
    clc.compute.leases = scheduler
    clc.compute.metadata_extras.append(scheduler.spot.metadata)

    async def suspend(zone: str, instance_id: str) -> bool:
        return not await clc.compute.suspend([instance_id])

    async def resume(zone: str, instance_id: str) -> bool:
        return not await clc.compute.suspend([instance_id], resume=True)

    # Every hypervisor the NCs drive can save and restore a guest (libvirt save/restore), the test driver too.
    scheduler.spot.suspend, scheduler.spot.resume = suspend, resume
    install_admin(clc)
    scheduler.start()
    return scheduler


async def uninstall(scheduler: LeaseScheduler) -> None:
    await scheduler.stop()
    await scheduler.store.close()


def install_admin(clc: CloudControllerService) -> None:
    """SuspendInstance / ResumeInstance for the admin (`koala admin suspend|resume INSTANCE`)."""

    async def act(message: InstanceRef, resume: bool) -> InstanceStateResponse:
        errors = await clc.compute.suspend([message.instance_id], resume=resume)
        if errors:
            raise RpcError(409, "IncorrectInstanceState", f"{message.instance_id}: {errors[message.instance_id]}")
        instance = clc.compute.store.instances[ids.normalize(message.instance_id)]
        return InstanceStateResponse(instance_id=instance.instance_id, state=instance.state)

    async def suspend(message: InstanceRef, caller: Caller) -> InstanceStateResponse:
        return await act(message, False)

    async def resume(message: InstanceRef, caller: Caller) -> InstanceStateResponse:
        return await act(message, True)

    clc.rpc.add("SuspendInstance", suspend, {"admin"}, InstanceRef)
    clc.rpc.add("ResumeInstance", resume, {"admin"}, InstanceRef)
