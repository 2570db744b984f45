"""Clusters and their nodes: each CC's node registry (DescribeNodes), node registration and deregistration, live
migration of instances between a cluster's nodes with its progress, and node maintenance (evacuate, restore). The
registry, the migrations and their rules are the CC's; these pages call its signed internal operations as the CLC."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

from common.messages.clc_cc import DeregisterNodeRequest, RegisterNodeRequest
from common.messages.migration import MigrateInstancesRequest, NodeRequest
from common.rpc import PeerUnreachable, RpcError
from services.cloud_controller.admin.app import Admin, Failure, Page

if TYPE_CHECKING:
    from services.cloud_controller.service import CloudControllerService

BACK = "/admin/clusters"
TIMEOUT = 5.0
MAX_MIGRATIONS = 20  # the latest ones shown per cluster


def _check_zone(service: CloudControllerService, zone: str) -> None:
    if zone not in service.clusters.zones:
        raise Failure(f"There is no cluster (zone) named {zone!r}.")


async def _nodes(service: CloudControllerService, zone: str, url: str) -> dict[str, Any]:
    empty: dict[str, Any] = {"zone": zone, "url": url, "nodes": [], "policy": "", "migrations": []}
    try:
        answer = await service.compute.cc.describe_nodes(zone, timeout=TIMEOUT)
    except (RpcError, PeerUnreachable) as err:
        return {**empty, "error": f"{err.message} ({err.code})"}
    except TimeoutError:
        return {**empty, "error": "no answer in time"}
    try:
        listing = await service.compute.cc.describe_migrations(zone, timeout=TIMEOUT)
        moves = sorted(listing.migrations, key=lambda m: -m.started_at)[:MAX_MIGRATIONS]
    except (RpcError, PeerUnreachable, TimeoutError):  # a remote zone: no migrations to show
        moves = []
    return {**empty, "error": "", "nodes": answer.nodes, "policy": answer.policy, "migrations": moves}


async def show(page: Page) -> web.StreamResponse:
    clusters = page.service.clusters.zones
    found = await asyncio.gather(*(_nodes(page.service, zone, url) for zone, url in sorted(clusters.items())))
    # While a migration runs, the page reloads itself every 2 s to show its progress.
    moving = any(m.state not in ("done", "failed") for c in found for m in c["migrations"])
    return page.render("clusters.html", clusters=found, refresh=2 if moving else 0)


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


async def migrate_instance(page: Page) -> web.StreamResponse:
    zone = page.field("zone", 64)
    request = MigrateInstancesRequest(
        instance_ids=[page.field("instance_id", 32)], target_node=page.field("target", 300, required=False)
    )
    _check_zone(page.service, zone)
    answer = await page.service.compute.cc.migrate_instances(zone, request)
    if answer.errors:
        instance_id, error = next(iter(answer.errors.items()))
        raise Failure(f"{instance_id} cannot be migrated: {error}")
    for moving in answer.migrations:
        page.flash("ok", f"Migrating {moving.instance_id} from {moving.source_node} to {moving.target_node}.")
    return page.redirect(BACK)


async def evacuate_node(page: Page) -> web.StreamResponse:
    zone = page.field("zone", 64)
    request = NodeRequest(node=page.field("node", 300))
    _check_zone(page.service, zone)
    answer = await page.service.compute.cc.evacuate_node(zone, request)
    moving = len(answer.migrations)
    page.flash("ok", f"Node {answer.node} is under maintenance: {moving} instance{'s' * (moving != 1)} moving off.")
    for instance_id, error in answer.errors.items():
        page.flash("error", f"{instance_id} cannot be moved now: {error}")
    return page.redirect(BACK)


async def restore_node(page: Page) -> web.StreamResponse:
    zone = page.field("zone", 64)
    request = NodeRequest(node=page.field("node", 300))
    _check_zone(page.service, zone)
    answer = await page.service.compute.cc.restore_node(zone, request)
    page.flash("ok", f"Node {answer.node} is back in service.")
    return page.redirect(BACK)


def register(admin: Admin) -> None:
    admin.get(BACK, show)
    admin.post(BACK + "/register", register_node, back=BACK)
    admin.post(BACK + "/deregister", deregister_node, back=BACK)
    admin.post(BACK + "/migrate", migrate_instance, back=BACK)
    admin.post(BACK + "/evacuate", evacuate_node, back=BACK)
    admin.post(BACK + "/restore", restore_node, back=BACK)
