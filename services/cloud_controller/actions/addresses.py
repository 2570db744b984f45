"""Elastic addresses: AllocateAddress, ReleaseAddress, AssociateAddress, DisassociateAddress, DescribeAddresses
(EC2-Classic, domain `standard`). The logic is `compute.elastic.Elastic` (`ctx.clc.compute.elastic`)."""

from __future__ import annotations

from typing import Any

from services.cloud_controller.actions import Context, action
from services.cloud_controller.compute.addresses import Address
from services.cloud_controller.compute.elastic import Elastic
from services.cloud_controller.compute.errors import check_id
from services.cloud_controller.ec2.errors import Ec2Error, invalid
from services.cloud_controller.ec2.filters import Filters

ADDRESS_FILTERS = {"public-ip", "allocation-id", "association-id", "instance-id", "domain", "private-ip-address"}
MAX_IDS = 1000


def elastic(ctx: Context) -> Elastic:
    return ctx.clc.compute.elastic


def address_dict(address: Address, private_ip: str) -> dict[str, Any]:
    return {
        "PublicIp": address.public_ip,
        "AllocationId": address.allocation_id,
        "Domain": "standard",
        "InstanceId": address.instance_id or None,
        "AssociationId": address.association_id or None,
        "PrivateIpAddress": private_ip or None,
    }


@action("AllocateAddress")
async def allocate_address(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    if params.get("Domain") not in (None, "standard"):
        raise Ec2Error("InvalidParameterValue", "Only the 'standard' domain (EC2-Classic) is available")
    if params.get("Address"):
        raise Ec2Error("InvalidParameterValue", "Choosing the address is not supported")
    address = await elastic(ctx).allocate(ctx.principal)
    return {"PublicIp": address.public_ip, "AllocationId": address.allocation_id, "Domain": "standard"}


@action("ReleaseAddress")
async def release_address(ctx: Context, params: dict[str, Any]) -> None:
    await elastic(ctx).release(ctx.principal, params.get("PublicIp") or "", params.get("AllocationId") or "")
    return None


@action("AssociateAddress")
async def associate_address(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    instance_id = params.get("InstanceId")
    if not instance_id:
        raise Ec2Error("MissingParameter", "The request must contain the parameter InstanceId")
    address = await elastic(ctx).associate(
        ctx.principal, instance_id, params.get("PublicIp") or "", params.get("AllocationId") or ""
    )
    return {"AssociationId": address.association_id}


@action("DisassociateAddress")
async def disassociate_address(ctx: Context, params: dict[str, Any]) -> None:
    await elastic(ctx).disassociate(ctx.principal, params.get("PublicIp") or "", params.get("AssociationId") or "")
    return None


@action("DescribeAddresses")
async def describe_addresses(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    engine = ctx.clc.compute
    ips, allocation_ids = params.get("PublicIps") or [], params.get("AllocationIds") or []
    if len(ips) + len(allocation_ids) > MAX_IDS:
        raise invalid("PublicIp", len(ips) + len(allocation_ids), f"At most {MAX_IDS} addresses.")
    filters = Filters.parse(params.get("Filters"), ADDRESS_FILTERS, tags=False)
    mine = [a for a in engine.addresses.allocated.values() if not a.auto and a.owner_id == ctx.owner_id]
    for ip in ips:
        if not any(a.public_ip == ip for a in mine):
            raise Ec2Error("InvalidAddress.NotFound", f"Address '{ip[:64]}' not found.")
    for allocation_id in allocation_ids:
        check_id(allocation_id, "eipalloc")
        if not any(a.allocation_id == allocation_id for a in mine):
            raise Ec2Error("InvalidAllocationID.NotFound", f"The allocation ID '{allocation_id[:64]}' does not exist")
    if ips or allocation_ids:
        mine = [a for a in mine if a.public_ip in ips or a.allocation_id in allocation_ids]
    result = []
    for address in sorted(mine, key=lambda a: a.allocated_at):
        instance = engine.store.instances.get(address.instance_id) if address.instance_id else None
        private_ip = instance.private_ip if instance else ""
        if filters.match_all(
            {
                "public-ip": address.public_ip,
                "allocation-id": address.allocation_id,
                "association-id": address.association_id,
                "instance-id": address.instance_id,
                "domain": "standard",
                "private-ip-address": private_ip,
            }
        ):
            result.append(address_dict(address, private_ip))
    return {"Addresses": result}
