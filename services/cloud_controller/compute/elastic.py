"""Elastic addresses as users see them: Allocate, Release, Associate, Disassociate, with the CCs told of every
mapping (AssignAddress/UnassignAddress, common/messages/network.py) and per-account address quotas."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel

from common import ids
from common.messages.network import (
    AssignAddressRequest,
    UnassignAddressRequest,
)
from common.rpc import PeerUnreachable, RpcError
from services.cloud_controller.compute.addresses import Address, Addresses
from services.cloud_controller.compute.admission import count_quota
from services.cloud_controller.compute.cc_client import ClusterClient
from services.cloud_controller.compute.errors import ComputeError, check_id
from services.cloud_controller.compute.store import Store

if TYPE_CHECKING:
    from services.cloud_controller.compute.engine import Principal, Settings
    from services.cloud_controller.compute.store import Instance

log = logging.getLogger("koala.clc.addresses")


class ElasticEngine(Protocol):
    """What elastic addresses ask of the engine they are part of (engine.Compute)."""

    def instance(self, instance_id: str, principal: Principal) -> Instance: ...


class Elastic:
    """The public `addresses` users hold, the instances' records (`store`) following, told to the CCs (`cc`)."""

    def __init__(
        self, engine: ElasticEngine, store: Store, settings: Settings, cc: ClusterClient, addresses: Addresses
    ):
        self.engine, self.store, self.settings, self.cc, self.addresses = engine, store, settings, cc, addresses
        self.zone_pools: dict[str, list[str]] = {}  # from the CCs' DescribePublicAddresses
        self.configured_pool = list(addresses.pool)

    # --- the pool ---------------------------------------------------------------------------------------
    async def refresh_pool(self, zone: str) -> None:
        try:
            answer = await self.cc.describe_public_addresses(zone)
        except (RpcError, PeerUnreachable):
            return  # an older CC without the operation, or unreachable: keep what we have
        if answer.supported:
            self.zone_pools[zone] = [a.public_ip for a in answer.addresses]
            pool = dict.fromkeys(self.configured_pool)
            for addresses in self.zone_pools.values():
                pool.update(dict.fromkeys(addresses))
            self.addresses.set_pool(list(pool))

    # --- telling the CC ---------------------------------------------------------------------------------
    async def _cc(self, zone: str, operation: str, message: BaseModel) -> None:
        try:
            await self.cc.address(zone, operation, message)
        except (RpcError, PeerUnreachable) as err:
            # SYSTEM/STATIC modes have no NAT to set up: the address is bookkeeping only there.
            level = logging.DEBUG if err.code in ("UnknownOperation", "UnsupportedOperation") else logging.WARNING
            log.log(level, "%s in %s failed: %s", operation, zone, err)

    async def assign(self, instance: Instance, public_ip: str) -> None:
        await self._cc(
            instance.zone,
            "AssignAddress",
            AssignAddressRequest(public_ip=public_ip, instance_id=instance.instance_id, private_ip=instance.private_ip),
        )

    async def unassign(self, zone: str, public_ip: str) -> None:
        await self._cc(zone, "UnassignAddress", UnassignAddressRequest(public_ip=public_ip))

    # --- user operations --------------------------------------------------------------------------------
    async def allocate(self, principal: Principal) -> Address:
        owned = len(self.addresses.owned(principal.account_id, auto=False))
        count_quota(owned, 1, self.settings.quota_addresses, "addresses")
        address = self.addresses.take(principal.account_id)
        try:
            await self.addresses.save(address)
        except Exception:
            self.addresses.give_back(address)
            raise
        return address

    def find(self, principal: Principal, public_ip: str = "", allocation_id: str = "") -> Address:
        if not public_ip and not allocation_id:
            raise ComputeError("MissingParameter", "The request must contain the parameter PublicIp or AllocationId")
        if allocation_id:
            allocation_id = check_id(allocation_id, "eipalloc")
        return self.addresses.find(principal.account_id, public_ip, allocation_id)

    async def release(self, principal: Principal, public_ip: str = "", allocation_id: str = "") -> None:
        address = self.find(principal, public_ip, allocation_id)
        if address.auto:
            raise ComputeError("InvalidIPAddress.InUse", f"The address {address.public_ip} is in use by an instance")
        if address.instance_id:
            await self._detach(address)
        self.addresses.give_back(address)
        await self.addresses.save(address)

    async def associate(
        self, principal: Principal, instance_id: str, public_ip: str = "", allocation_id: str = ""
    ) -> Address:
        check_id(instance_id, "i")
        address = self.find(principal, public_ip, allocation_id)
        if address.auto:
            raise ComputeError("InvalidIPAddress.InUse", f"The address {address.public_ip} is in use by an instance")
        instance = self.engine.instance(instance_id, principal)
        if not instance.live or instance.state == "shutting-down":
            raise ComputeError("IncorrectInstanceState", f"The instance '{instance_id}' is not running")
        if address.instance_id == instance.instance_id:
            return address
        if address.instance_id:
            await self._detach(address)
        changed = [address]
        previous = self.addresses.allocated.get(instance.public_ip) if instance.public_ip else None
        if previous is not None and previous is not address and previous.instance_id == instance.instance_id:
            await self.unassign(instance.zone, previous.public_ip)
            if previous.auto:
                self.addresses.give_back(previous)
            else:
                previous.instance_id = previous.association_id = ""
            changed.append(previous)
        address.instance_id, address.association_id = instance.instance_id, ids.new_id("eipassoc")
        instance.public_ip = address.public_ip
        await self.addresses.save(*changed)
        await self.store.save_instances([instance])
        await self.assign(instance, address.public_ip)
        return address

    async def disassociate(self, principal: Principal, public_ip: str = "", association_id: str = "") -> None:
        if association_id:
            association_id = check_id(association_id, "eipassoc")
            for candidate in self.addresses.allocated.values():
                if candidate.association_id == association_id and candidate.owner_id == principal.account_id:
                    address = candidate
                    break
            else:
                raise ComputeError(
                    "InvalidAssociationID.NotFound", f"The association ID '{association_id[:64]}' does not exist"
                )
        else:
            address = self.find(principal, public_ip)
        if address.auto or not address.instance_id:
            return
        await self._detach(address)
        await self.addresses.save(address)

    async def _detach(self, address: Address) -> None:
        """Unmap an elastic address from its instance; the instance gets a pool address again if one is free."""
        instance = self.store.instances.get(address.instance_id)
        address.instance_id = address.association_id = ""
        if instance is None:
            return
        await self.unassign(instance.zone, address.public_ip)
        instance.public_ip = ""
        if instance.live and self.settings.auto_public_ip:
            try:
                replacement = self.addresses.take(instance.owner_id, auto=True)
            except ComputeError:
                replacement = None
            if replacement is not None:
                replacement.instance_id = instance.instance_id
                replacement.association_id = ids.new_id("eipassoc")
                instance.public_ip = replacement.public_ip
                await self.addresses.save(replacement)
                await self.assign(instance, replacement.public_ip)
        await self.store.save_instances([instance])
