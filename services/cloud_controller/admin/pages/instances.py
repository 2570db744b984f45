"""Instances: list and filter, console output, terminate. Termination and console output are the compute
engine's own (the same calls TerminateInstances and GetConsoleOutput make), acting as the cloud administrator."""

from __future__ import annotations

import base64
import binascii

from aiohttp import web

from services.cloud_controller.admin.app import Admin, Failure, Page
from services.cloud_controller.compute.store import Instance

BACK = "/admin/instances"
FILTERS = ("state", "zone", "owner", "vm_type", "node", "q")
MAX_ROWS = 500


def _matches(instance: Instance, wanted: dict[str, str]) -> bool:
    checks = {
        "state": instance.state,
        "zone": instance.zone,
        "owner": instance.owner_id,
        "vm_type": instance.vm_type,
        "node": instance.node_id,
    }
    for name, value in checks.items():
        if wanted.get(name) and wanted[name] != value:
            return False
    text = wanted.get("q", "").lower()
    if text:
        haystack = " ".join(
            (instance.instance_id, instance.reservation_id, instance.image_id, instance.private_ip, instance.public_ip)
        ).lower()
        return text in haystack
    return True


async def show(page: Page) -> web.StreamResponse:
    engine = page.service.compute
    wanted = {name: page.request.query.get(name, "").strip()[:64] for name in FILTERS}
    everything = sorted(engine.store.instances.values(), key=lambda i: (-i.launch_time, i.instance_id))
    found = [i for i in everything if _matches(i, wanted)]
    choices = {
        "state": sorted({i.state for i in everything}),
        "zone": sorted(page.service.clusters.zones),
        "vm_type": [vm.name for vm in engine.vmtypes.list()],
    }
    return page.render(
        "instances.html",
        instances=found[:MAX_ROWS],
        total=len(found),
        limit=MAX_ROWS,
        wanted=wanted,
        choices=choices,
    )


async def console(page: Page) -> web.StreamResponse:
    engine = page.service.compute
    instance_id = page.request.match_info["instance_id"]
    instance, output = await engine.console_output(await page.principal(), instance_id)
    try:
        text = base64.b64decode(output).decode("utf-8", errors="replace") if output else ""
    except (binascii.Error, ValueError):
        text = output
    return page.render("console.html", instance=instance, output=text)


async def terminate(page: Page) -> web.StreamResponse:
    engine = page.service.compute
    chosen = [value for value in page.form.getall("instance_id", []) if isinstance(value, str)]
    if not chosen:
        raise Failure("Choose at least one instance to terminate.")
    if len(chosen) > 1000:
        raise Failure("At most 1000 instances at once.")
    result = await engine.terminate(await page.principal(), chosen)
    page.flash(
        "ok",
        "Terminating " + ", ".join(f"{i.instance_id} (was {previous})" for i, previous in result) + ".",
    )
    return page.redirect(BACK)


def register(admin: Admin) -> None:
    admin.get(BACK, show)
    admin.get(BACK + "/{instance_id:i-[0-9a-fA-F]{8,17}}/console", console)
    admin.post(BACK + "/terminate", terminate, back=BACK)
