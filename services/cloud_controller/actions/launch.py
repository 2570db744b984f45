"""What every way of launching checks the same way: the key pair and the security groups a launch names."""

from __future__ import annotations

from typing import Any

from services.cloud_controller.actions import Context
from services.cloud_controller.ec2.errors import Ec2Error, invalid


async def launch_access(ctx: Context, launch: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """A launch's key pair (its public key, "" for none) and security groups (by name or id), checked as
    RunInstances checks them; RequestSpotInstances checks its launch specification the same way."""
    key_name = launch.get("KeyName") or ""
    key_material = ""
    if key_name:
        found = await ctx.compute.key_pairs.public_key(ctx.owner_id, key_name)
        if found is None:
            raise Ec2Error("InvalidKeyPair.NotFound", f"The key pair '{key_name[:255]}' does not exist")
        key_material = found
    names, group_ids = list(launch.get("SecurityGroups") or []), list(launch.get("SecurityGroupIds") or [])
    if len(names) + len(group_ids) > 64:
        raise invalid("SecurityGroup", len(names) + len(group_ids), "At most 64 security groups.")
    return key_material, await ctx.compute.security_groups.resolve(ctx.owner_id, names, group_ids)
