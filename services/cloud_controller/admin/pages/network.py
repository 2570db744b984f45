"""Addresses and security groups (views): the elastic address pool and who holds what, and every account's
security groups with their rules, read through the same helpers DescribeAddresses/DescribeSecurityGroups use."""

from __future__ import annotations

from aiohttp import web

from services.cloud_controller.admin.app import Admin, Page

MAX_GROUPS = 1000


async def show(page: Page) -> web.StreamResponse:
    engine = page.service.compute
    addresses = sorted(engine.addresses.allocated.values(), key=lambda a: tuple(map(int, a.public_ip.split("."))))
    store = engine.security_groups
    rows = await store.every_account(MAX_GROUPS)
    groups = [{**dict(row), "rules": await store.rules(row["group_id"])} for row in rows]
    return page.render(
        "network.html",
        addresses=addresses,
        pool_size=len(engine.addresses.pool),
        free=engine.addresses.free_count(),
        groups=groups,
    )


def register(admin: Admin) -> None:
    admin.get("/admin/network", show)
