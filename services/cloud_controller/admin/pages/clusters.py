"""Clusters and their nodes: each CC's node registry (DescribeNodes), node registration and deregistration. The
registry and its rules are the CC's; these pages call its signed internal operations as the CLC."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from common.messages.clc_cc import DeregisterNodeRequest, DescribeNodesResponse, RegisterNodeRequest
from common.rpc import PeerUnreachable, RpcError
from services.cloud_controller.admin.app import Admin, Failure, Page

if TYPE_CHECKING:
    from services.cloud_controller.service import CloudControllerService

BACK = "/admin/clusters"
TIMEOUT = 5.0


class _Answer(BaseModel):
    """Whatever the CC answers a (de)registration with; only success matters here."""

    model_config = ConfigDict(extra="allow")


def _url(service: CloudControllerService, zone: str) -> str:
    url = service.clusters.zones.get(zone)
    if url is None:
        raise Failure(f"There is no cluster (zone) named {zone!r}.")
    return url


async def _nodes(service: CloudControllerService, zone: str, url: str) -> dict[str, Any]:
    try:
        answer = await service.client.call(
            url, "DescribeNodes", None, DescribeNodesResponse, timeout=TIMEOUT, idempotent=True, expect_role="cc"
        )
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
    await page.service.client.call(_url(page.service, zone), "RegisterNode", request, _Answer, expect_role="cc")
    page.flash("ok", f"Node {request.node} is registered in {zone}.")
    return page.redirect(BACK)


async def deregister_node(page: Page) -> web.StreamResponse:
    zone = page.field("zone", 64)
    request = DeregisterNodeRequest(node=page.field("node", 300))
    await page.service.client.call(_url(page.service, zone), "DeregisterNode", request, _Answer, expect_role="cc")
    page.flash("ok", f"Node {request.node} is deregistered from {zone}.")
    return page.redirect(BACK)


def register(admin: Admin) -> None:
    admin.get(BACK, show)
    admin.post(BACK + "/register", register_node, back=BACK)
    admin.post(BACK + "/deregister", deregister_node, back=BACK)
