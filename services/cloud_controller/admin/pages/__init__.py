"""The admin pages, one module per subject; each has `register(admin)`."""

from __future__ import annotations

from services.cloud_controller.admin.pages import accounts, clusters, dashboard, vmtypes

MODULES = [dashboard, accounts, clusters, vmtypes]


def register_all(admin) -> None:
    for module in MODULES:
        module.register(admin)
