"""Clusters and their nodes: each CC's node registry (DescribeNodes), node registration and deregistration. The
registry and its rules are the CC's; these pages call its signed internal operations as the CLC."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

from common.messages.clc_cc import DeregisterNodeRequest, RegisterNodeRequest
from common.rpc import PeerUnreachable, RpcError
from services.cloud_controller.admin.app import Admin, Failure, Page

if TYPE_CHECKING:
    from services.cloud_controller.service import CloudControllerService

BACK = "/admin/clusters"
TIMEOUT = 5.0


def _check_zone(service: CloudControllerService, zone: str) -> None:
    if zone not in service.clusters.zones:
        raise Failure(f"There is no cluster (zone) named {zone!r}.")


async def _nodes(service: CloudControllerService, zone: str, url: str) -> dict[str, Any]:
    try:
        answer = await service.compute.cc.describe_nodes(zone, timeout=TIMEOUT)
    except (RpcError, PeerUnreachable) as err:
        return {"zone": zone, "url": url, "error": f"{err.message} ({err.code})", "nodes": [], "policy": ""}
    except TimeoutError:
        return {"zone": zone, "url": url, "error": "no answer in time", "nodes": [], "policy": ""}
    return {"zone": zone, "url": url, "error": "", "nodes": answer.nodes, "policy": answer.policy}


async def show(page: Page) -> web.StreamResponse:
    clusters = page.service.clusters.zones
    found = await asyncio.gather(*(_nodes(page.service, zone, url) for zone, url in sorted(clusters.items())))
    return page.render("clusters.html", clusters=found)


async def register_node(page: Page) -> web.StreamResponse:
    zone = page.field("zone", 64)
    request = RegisterNodeRequest(node=page.field("node", 300), mac=page.field("mac", 17, required=False))
    _check_zone(page.service, zone)
    await page.service.compute.cc.register_node(zone, request)
    page.flash("ok", f"Node {request.node} is registered in {zone}.")
    return page.redirect(BACK)


async def deregister_node(page: Page) -> web.StreamResponse:
    zone = page.field("zone", 64)
    request = DeregisterNodeRequest(node=page.field("node", 300))
    _check_zone(page.service, zone)
    await page.service.compute.cc.deregister_node(zone, request)
    page.flash("ok", f"Node {request.node} is deregistered from {zone}.")
    return page.redirect(BACK)


def register(admin: Admin) -> None:
    admin.get(BACK, show)
    admin.post(BACK + "/register", register_node, back=BACK)
    admin.post(BACK + "/deregister", deregister_node, back=BACK)
