"""The CC's network operations for the CLC (role clc), registered on the CC's signed RPC server."""

from __future__ import annotations

from typing import TYPE_CHECKING

from common.messages.network import (
    AddressResponse,
    AssignAddressRequest,
    ConfigureNetworkRequest,
    DescribeNetworksRequest,
    DescribeNetworksResponse,
    DescribePublicAddressesResponse,
    NetworkResponse,
    StartNetworkRequest,
    StopNetworkRequest,
    UnassignAddressRequest,
)
from common.rpc import Caller, RpcError
from services.cluster_controller.network.manager import NetworkManager, NetworkRequestError

if TYPE_CHECKING:
    from common.rpc import RpcServer

ROLES = frozenset({"clc"})
READ_ROLES = frozenset({"clc", "admin"})


def _rpc_error(err: NetworkRequestError) -> RpcError:
    return RpcError(err.status, err.code, err.message)


def register(rpc: RpcServer, manager: NetworkManager) -> None:
    async def start_network(msg: StartNetworkRequest, caller: Caller) -> NetworkResponse:
        try:
            return NetworkResponse(network=await manager.start_network(msg.name, msg.vlan))
        except NetworkRequestError as err:
            raise _rpc_error(err) from None

    async def stop_network(msg: StopNetworkRequest, caller: Caller) -> NetworkResponse:
        try:
            return NetworkResponse(network=await manager.stop_network(msg.name, msg.vlan))
        except NetworkRequestError as err:
            raise _rpc_error(err) from None

    async def configure_network(msg: ConfigureNetworkRequest, caller: Caller) -> NetworkResponse:
        try:
            return NetworkResponse(network=await manager.configure_network(msg.name, msg.vlan, msg.rules))
        except NetworkRequestError as err:
            raise _rpc_error(err) from None

    async def assign_address(msg: AssignAddressRequest, caller: Caller) -> AddressResponse:
        try:
            return AddressResponse(address=await manager.assign_address(msg.public_ip, msg.private_ip, msg.instance_id))
        except NetworkRequestError as err:
            raise _rpc_error(err) from None

    async def unassign_address(msg: UnassignAddressRequest, caller: Caller) -> AddressResponse:
        try:
            return AddressResponse(address=await manager.unassign_address(msg.public_ip))
        except NetworkRequestError as err:
            raise _rpc_error(err) from None

    async def describe_networks(msg: DescribeNetworksRequest, caller: Caller) -> DescribeNetworksResponse:
        settings = manager.settings
        low, high = manager.vlan_range()
        return DescribeNetworksResponse(
            mode=settings.VNET_MODE,
            subnet=str(settings.vnet_subnet) if settings.managed else "",
            addrs_per_net=settings.VNET_ADDRSPERNET if settings.managed else 0,
            vlan_min=low,
            vlan_max=high,
            cloud_ip=settings.VNET_CLOUDIP,
            networks=await manager.describe_networks(msg.names),
        )

    async def describe_public_addresses(msg: object, caller: Caller) -> DescribePublicAddressesResponse:
        supported, addresses = await manager.describe_public_addresses()
        return DescribePublicAddressesResponse(supported=supported, addresses=addresses)

    rpc.add("StartNetwork", start_network, ROLES, StartNetworkRequest)
    rpc.add("StopNetwork", stop_network, ROLES, StopNetworkRequest)
    rpc.add("ConfigureNetwork", configure_network, ROLES, ConfigureNetworkRequest)
    rpc.add("AssignAddress", assign_address, ROLES, AssignAddressRequest)
    rpc.add("UnassignAddress", unassign_address, ROLES, UnassignAddressRequest)
    rpc.add("DescribeNetworks", describe_networks, READ_ROLES, DescribeNetworksRequest)
    rpc.add("DescribePublicAddresses", describe_public_addresses, READ_ROLES)
