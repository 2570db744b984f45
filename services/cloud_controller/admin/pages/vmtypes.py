"""VM types: list, edit, add, delete. The ordering rule and every check are compute.vmtypes' own."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from services.cloud_controller.admin.app import Admin, Page
from services.cloud_controller.compute.engine import Compute

BACK = "/admin/vmtypes"
_refreshes: set[asyncio.Task[Any]] = set()


async def show(page: Page) -> web.StreamResponse:
    engine = page.service.compute
    return page.render("vmtypes.html", types=engine.vmtypes.list())


def _refresh(engine: Compute) -> None:
    """Capacity per type changed: ask the CCs again in the background, so the dashboard shows it soon."""
    task = asyncio.create_task(engine.capacity.refresh_capacity())
    _refreshes.add(task)
    task.add_done_callback(_refreshes.discard)


async def save(page: Page) -> web.StreamResponse:
    engine = page.service.compute
    name = page.field("name", 40)
    vm = await engine.vmtypes.set(
        name,
        page.integer("cores", 1, 1 << 20),
        page.integer("memory_mb", 1, 1 << 40),
        page.integer("disk_gb", 1, 1 << 40),
    )
    _refresh(engine)
    page.flash("ok", f"VM type {vm.name} is now {vm.cores} cores, {vm.memory_mb} MiB memory, {vm.disk_gb} GiB disk.")
    return page.redirect(BACK)


async def delete(page: Page) -> web.StreamResponse:
    engine = page.service.compute
    name = page.field("name", 40)
    await engine.vmtypes.delete(name)
    _refresh(engine)
    page.flash("ok", f"VM type {name} was deleted.")
    return page.redirect(BACK)


def register(admin: Admin) -> None:
    admin.get(BACK, show)
    admin.post(BACK, save, back=BACK)
    admin.post(BACK + "/delete", delete, back=BACK)
