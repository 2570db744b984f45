"""The admin pages, one module per subject; each has `register(admin)`."""

from __future__ import annotations

from services.cloud_controller.admin.app import Admin
from services.cloud_controller.admin.pages import (
    accounts,
    clusters,
    dashboard,
    images,
    instances,
    leases,
    network,
    vmtypes,
    volumes,
)

MODULES = [dashboard, accounts, clusters, vmtypes, images, instances, volumes, network, leases]


def register_all(admin: Admin) -> None:
    for module in MODULES:
        module.register(admin)
