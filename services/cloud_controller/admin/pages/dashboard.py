"""The dashboard: each zone's free/max instances per VM type and its nodes, instance counts, service health."""

from __future__ import annotations

from collections import Counter

from aiohttp import web

from services.cloud_controller.admin.app import Admin, Page
from services.cloud_controller.admin.pages import health

STATES = ("pending", "running", "shutting-down", "terminated")


async def dashboard(page: Page) -> web.StreamResponse:
    service = page.service
    services = await health.report(service)
    engine = service.compute
    types = engine.vmtypes.list()
    zones = []
    for zone in sorted(service.clusters.zones):
        capacity = engine.admission.zones.get(zone)
        zones.append(
            {
                "name": zone,
                "reachable": bool(capacity and capacity.reachable),
                "nodes_up": capacity.nodes_up if capacity else 0,
                "nodes_total": capacity.nodes_total if capacity else 0,
                "types": [
                    {
                        "name": vm.name,
                        "free": engine.admission.free(zone, vm),
                        "max": engine.admission.maximum(zone, vm),
                    }
                    for vm in types
                ],
            }
        )
    tally = Counter(i.state for i in engine.store.instances.values())
    counts = {state: tally.get(state, 0) for state in STATES}
    return page.render("dashboard.html", services=services, zones=zones, counts=counts)


async def account(page: Page) -> web.StreamResponse:
    return page.render("password.html")


def register(admin: Admin) -> None:
    admin.get("/admin/", dashboard)
    admin.get("/admin/password", account)
    admin.post("/admin/password", admin.change_password, back="/admin/password")
    admin.post("/admin/logout", admin.logout, back="/admin/")
