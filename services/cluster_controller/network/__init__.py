"""The cluster's network (DESIGN section 6): VNET_* modes, security-group chains, elastic IPs, DHCP, metadata.

`install(service)` gives a CC service `service.network` (a NetworkManager) and registers the network
operations for the CLC; the manager restores the network when the service starts and stops managing it when
the service stops (the network itself stays up). The CC's own instance paths call
`service.network.add_instance(id, net)` (returns the completed NetConfig to send to the NC) and
`service.network.remove_instance(id)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from common.messages.clc_cc import RunInstancesRequest, RunInstancesResponse
from common.rpc import RpcError
from services.cluster_controller.network.manager import NetworkManager, NetworkRequestError
from services.cluster_controller.network.settings import VnetSettings

if TYPE_CHECKING:
    from services.cluster_controller.service import ClusterControllerService

__all__ = ["NetworkManager", "NetworkRequestError", "VnetSettings", "install", "launched", "prepare_launch"]


def install(service: ClusterControllerService) -> NetworkManager:
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


async def prepare_launch(manager: NetworkManager, request: RunInstancesRequest) -> RunInstancesRequest:
    """Before placement: complete each instance's NetConfig (MAC, private IP, bridge) and give it its DHCP entry
    (and elastic IP), so the guest finds its network when it boots."""
    nets = {launch.instance_id.lower(): launch.net for launch in request.instances}
    try:
        filled = await manager.add_instances(nets)
    except NetworkRequestError as err:
        raise RpcError(err.status, err.code, err.message) from None
    instances = [launch.model_copy(update={"net": filled[launch.instance_id.lower()]}) for launch in request.instances]
    return request.model_copy(update={"instances": instances})


async def launched(manager: NetworkManager, answer: RunInstancesResponse) -> None:
    """After placement: the instances that were not placed give their network entries back."""
    failed = [placement.instance_id for placement in answer.instances if placement.error]
    if failed:
        await manager.remove_instances(failed)
