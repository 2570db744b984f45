"""Addresses and security groups (views): the elastic address pool and who holds what, and every account's
security groups with their rules, read through the same helpers DescribeAddresses/DescribeSecurityGroups use."""

from __future__ import annotations

from services.cloud_controller.admin import backend
from services.cloud_controller.admin.app import Admin, Page

MAX_GROUPS = 1000


async def show(page: Page):
    addresses, pool_error, groups, groups_error = [], None, [], None
    pool_size = free = 0
    try:
        engine = backend.compute(page.service)
    except backend.Unavailable as err:
        pool_error = err.message
    else:
        addresses = sorted(engine.addresses.allocated.values(), key=lambda a: tuple(map(int, a.public_ip.split("."))))
        pool_size, free = len(engine.addresses.pool), engine.addresses.free_count()
    try:
        store = backend.compute(page.service).security_groups
        for row in await store.every_account(MAX_GROUPS):
            rules = await store.rules(row["group_id"])
            groups.append({**dict(row), "rules": rules})
    except backend.Unavailable as err:
        groups_error = err.message
    return page.render(
        "network.html",
        addresses=addresses,
        pool_size=pool_size,
        free=free,
        pool_error=pool_error,
        groups=groups,
        groups_error=groups_error,
    )


def register(admin: Admin) -> None:
    admin.get("/admin/network", show)
