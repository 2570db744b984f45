"""The cluster's network (DESIGN section 6): VNET_* modes, security-group chains, elastic IPs, DHCP, metadata.

`install(service)` gives a CC service `service.network` (a NetworkManager) and registers the network
operations for the CLC; the manager restores the network when the service starts and stops managing it when
the service stops (the network itself stays up). The CC's own instance paths call
`service.network.add_instance(id, net)` (returns the completed NetConfig to send to the NC) and
`service.network.remove_instance(id)`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.cluster_controller.network.manager import NetworkManager, NetworkRequestError
from services.cluster_controller.network.settings import VnetSettings

__all__ = ["NetworkManager", "NetworkRequestError", "VnetSettings", "install"]


def install(service: Any) -> NetworkManager:
    from services.cluster_controller.network import rpc

    manager = NetworkManager(service.config, service.config.KOALA_STATE_DIR)
    service.network = manager
    rpc.register(service.rpc, manager)

    async def on_startup(_: web.Application) -> None:
        await manager.start()

    async def on_cleanup(_: web.Application) -> None:
        await manager.stop()

    service.app.on_startup.append(on_startup)
    service.app.on_cleanup.append(on_cleanup)
    return manager
