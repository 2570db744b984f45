"""Leases: each zone's slot table through time as a Gantt-like chart (nodes down, time across: capacity
reservations, on-demand and spot instances), the capacity reservations, the spot queue in order, and every
preemption with its reason. Read-only: it shows the lease scheduler's own state (leases/)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from services.cloud_controller.admin.app import Admin, Page
from services.cloud_controller.leases.scheduler import LeaseScheduler
from services.cloud_controller.leases.slottable import INF

HORIZON = 24 * 3600.0  # the chart shows at least the next day, and up to the last reservation's end
MAX_HORIZON = 60 * 86400.0
WIDTH, ROW, LABEL = 900, 18, 120  # chart geometry (SVG units)
MAX_ROWS = 200
COLOURS = {"reserved": "#3b6fb6", "running": "#888888", "besteffort": "#e0902c", "shadow": "#e0902c"}


@dataclass
class Bar:
    x: float
    y: float
    width: float
    kind: str
    colour: str
    title: str
    height: float


def _when(stamp: float | None) -> str:
    if stamp is None or stamp == INF:
        return "unlimited"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(stamp))


def chart(scheduler: LeaseScheduler, zone: str, now: float) -> dict[str, Any]:
    table = scheduler.table(zone, now)
    ends = [cr.end for cr in scheduler.live_reservations(zone) if cr.end != INF]
    horizon = min(max([HORIZON, *(e - now for e in ends)]), MAX_HORIZON)
    scale = (WIDTH - LABEL) / horizon
    nodes = list(table.capacity)[:MAX_ROWS]
    bars = []
    for row, node in enumerate(nodes):
        capacity = table.capacity[node]
        # Each allocation is a bar as tall as its share of the node's cores, stacked in start order.
        offset = 0.0
        for a in sorted(table.allocations.get(node, ()), key=lambda a: (a.start, a.lease_id)):
            if a.end <= now or a.start >= now + horizon:
                continue
            start, end = max(a.start, now), min(a.end, now + horizon)
            share = a.res.cores / capacity.cores if capacity.cores else 1.0
            height = max((ROW - 4) * share, 2.0)
            bars.append(
                Bar(
                    LABEL + (start - now) * scale,
                    row * ROW + 2 + offset % (ROW - 4),
                    max((end - start) * scale, 1.0),
                    a.kind,
                    COLOURS.get(a.kind, "#444444"),
                    f"{a.lease_id} ({a.kind}) {a.res.cores} cores on {node}, {_when(a.start)} to {_when(a.end)}",
                    height,
                )
            )
            offset += height
    ticks = [(LABEL + i * (WIDTH - LABEL) / 4, _when(now + i * horizon / 4)) for i in range(5)]
    return {
        "zone": zone,
        "nodes": [(row * ROW, node) for row, node in enumerate(nodes)],
        "more_nodes": max(len(table.capacity) - MAX_ROWS, 0),
        "bars": bars,
        "height": max(len(nodes), 1) * ROW + 20,
        "ticks": ticks,
        "width": WIDTH,
        "label": LABEL,
    }


async def show(page: Page) -> web.StreamResponse:
    engine, scheduler = page.service.compute, page.service.leases
    now = time.time()
    charts = [chart(scheduler, zone, now) for zone in sorted(engine.cc.clusters)]
    reservations = sorted(scheduler.store.reservations.values(), key=lambda cr: (not cr.live, cr.start_date))[:500]
    spot = sorted(scheduler.store.spot.values(), key=lambda r: (r.state != "disabled", r.position))
    queue = [r for r in spot if r.state in ("open", "disabled")]
    active = [r for r in spot if r.state == "active"]
    return page.render(
        "leases.html",
        charts=charts,
        reservations=[
            {
                "id": cr.reservation_id,
                "owner": cr.owner_id,
                "zone": cr.zone,
                "type": cr.instance_type,
                "total": cr.total,
                "available": scheduler.available(cr),
                "start": _when(cr.start_date),
                "end": _when(cr.end_date),
                "state": cr.state,
                "match": cr.match,
            }
            for cr in reservations
        ],
        queue=queue[:500],
        queued=len(queue),
        active=active[:500],
        preemptions=list(reversed(scheduler.store.preemptions[-200:])),
        when=_when,
        colours=COLOURS,
    )


def register(admin: Admin) -> None:
    admin.get("/admin/leases", show)
