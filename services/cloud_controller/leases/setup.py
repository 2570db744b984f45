"""Wires the lease scheduler into the CLC: its store (leases.db), the slot table beside the compute engine's
admission, the spot queue and the scheduler's tick."""

from __future__ import annotations

from typing import Any

from services.cloud_controller.leases.scheduler import LeaseScheduler
from services.cloud_controller.leases.spot import SpotQueue
from services.cloud_controller.leases.store import LeaseStore


async def install(clc: Any) -> LeaseScheduler:
    """Call from the service's on_start, after the compute engine is installed (before the port opens)."""
    store = await LeaseStore.open(clc.config.KOALA_STATE_DIR)
    scheduler = LeaseScheduler(clc.compute, store, tick=clc.config.KOALA_LEASE_TICK_SECONDS)
    clc.compute.leases = scheduler
    scheduler.spot = SpotQueue(scheduler, notice=clc.config.KOALA_SPOT_NOTICE_SECONDS)
    clc.compute.metadata_extras.append(scheduler.spot.metadata)
    scheduler.start()
    return scheduler


async def uninstall(scheduler: LeaseScheduler) -> None:
    await scheduler.stop()
    await scheduler.store.close()
