"""The admin pages, one module per subject; each has `register(admin)`."""

from __future__ import annotations

from services.cloud_controller.admin.pages import clusters, dashboard, vmtypes

MODULES = [dashboard, clusters, vmtypes]


def register_all(admin) -> None:
    for module in MODULES:
        module.register(admin)
