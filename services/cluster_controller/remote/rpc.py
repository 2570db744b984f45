"""The operations only a remote zone answers for the CLC. Networks: its mode is REMOTE (the CLC offers it to
bursting launches and gives it no local public addresses), ConfigureNetwork sets a network's rules on its remote
group, and the operations of local networks (bridges, NAT of elastic addresses) are refused as unsupported.
Images: ForgetImages removes the remote copies of deregistered local images."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from common.messages.clc_cc import Ack, ImageIdsRequest
from common.messages.network import (
    AssignAddressRequest,
    ConfigureNetworkRequest,
    DescribeNetworksRequest,
    DescribeNetworksResponse,
    DescribePublicAddressesResponse,
    NetworkInfo,
    NetworkResponse,
    StartNetworkRequest,
    StopNetworkRequest,
    UnassignAddressRequest,
)
from common.rpc import Caller, RpcError
from services.cluster_controller.remote.zone import RemoteZone

if TYPE_CHECKING:
    from common.rpc import RpcServer
    from services.cluster_controller.service import ClusterControllerService

MODE = "REMOTE"
ROLES = frozenset({"clc"})
READ_ROLES = frozenset({"clc", "admin"})


def register(rpc: RpcServer, service: ClusterControllerService) -> None:
    """`service.cluster` is the RemoteZone (set at start)."""

    def network(name: str, vlan: int) -> NetworkResponse:
        return NetworkResponse(network=NetworkInfo(name=name, vlan=vlan))

    async def configure_network(msg: ConfigureNetworkRequest, caller: Caller) -> NetworkResponse:
        zone = service.cluster
        assert isinstance(zone, RemoteZone)  # this module serves remote zones only
        await zone.configure_network(msg.name, msg.rules)
        return network(msg.name, msg.vlan)

    async def start_network(msg: StartNetworkRequest, caller: Caller) -> NetworkResponse:
        return network(msg.name, msg.vlan)  # nothing local to set up

    async def stop_network(msg: StopNetworkRequest, caller: Caller) -> NetworkResponse:
        return network(msg.name, msg.vlan)

    async def unsupported(msg: Any, caller: Caller) -> NetworkResponse:
        raise RpcError(400, "UnsupportedOperation", "a remote zone has no local addresses to assign")

    async def describe_networks(msg: DescribeNetworksRequest, caller: Caller) -> DescribeNetworksResponse:
        return DescribeNetworksResponse(mode=MODE, networks=[])

    async def describe_public_addresses(msg: object, caller: Caller) -> DescribePublicAddressesResponse:
        return DescribePublicAddressesResponse(supported=False, addresses=[])

    async def forget_images(msg: ImageIdsRequest, caller: Caller) -> Ack:
        zone = service.cluster
        assert isinstance(zone, RemoteZone)
        await zone.remote_images.forget(msg.image_ids)  # written here; the remote copies go in the background
        return Ack()

    rpc.add("ForgetImages", forget_images, ROLES, ImageIdsRequest)
    rpc.add("ConfigureNetwork", configure_network, ROLES, ConfigureNetworkRequest)
    rpc.add("StartNetwork", start_network, ROLES, StartNetworkRequest)
    rpc.add("StopNetwork", stop_network, ROLES, StopNetworkRequest)
    rpc.add("AssignAddress", unsupported, ROLES, AssignAddressRequest)
    rpc.add("UnassignAddress", unsupported, ROLES, UnassignAddressRequest)
    rpc.add("DescribeNetworks", describe_networks, READ_ROLES, DescribeNetworksRequest)
    rpc.add("DescribePublicAddresses", describe_public_addresses, READ_ROLES)
