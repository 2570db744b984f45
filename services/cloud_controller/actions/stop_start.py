"""StopInstances, StartInstances and CreateImage: EBS-backed instances (compute/stop_start.py, ebs/roots.py).

Only an instance whose root device is an EBS volume can be stopped (its disk outlives the domain); an
instance-store one is refused with EC2's UnsupportedOperation. The checks come first for every id named, so nothing
happens to any of them when one is refused.
"""

from __future__ import annotations

from typing import Any

from services.cloud_controller.actions import Context, action
from services.cloud_controller.actions.instances import compute, state
from services.cloud_controller.compute.store import STATE_CODES, Instance
from services.cloud_controller.ebs.roots import parse_mappings
from services.cloud_controller.ec2.errors import Ec2Error, invalid

MAX_IDS = 1000


def _ids(params: dict[str, Any]) -> list[str]:
    ids = list(dict.fromkeys(params.get("InstanceIds") or []))
    if not ids:
        raise Ec2Error("MissingParameter", "The request must contain the parameter InstanceId")
    if len(ids) > MAX_IDS:
        raise invalid("InstanceIds", f"{len(ids)} ids", f"At most {MAX_IDS} ids per request.")
    return ids


def _changes(result: list[tuple[Instance, str]]) -> list[dict[str, Any]]:
    return [
        {"InstanceId": instance.instance_id, "CurrentState": state(instance),
         "PreviousState": {"Code": STATE_CODES[previous], "Name": previous}}
        for instance, previous in result
    ]  # fmt: skip


@action("StopInstances")
async def stop_instances(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    result = await compute(ctx).stop_start.stop(ctx.principal, _ids(params))
    return {"StoppingInstances": _changes(result)}


@action("StartInstances")
async def start_instances(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    result = await compute(ctx).stop_start.start(ctx.principal, _ids(params))
    return {"StartingInstances": _changes(result)}


@action("CreateImage")
async def create_image(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    roots = compute(ctx).roots
    if roots is None:
        raise Ec2Error("UnsupportedOperation", "This cloud has no block storage for EBS-backed images")
    # Without NoReboot a running instance is stopped for its snapshots and started again (EC2 reboots it).
    mappings = parse_mappings(params.get("BlockDeviceMappings"))
    image = await roots.create_image(
        ctx.principal,
        params["InstanceId"],
        params.get("Name") or "",
        params.get("Description") or "",
        mappings,
        no_reboot=params.get("NoReboot") is True,
    )
    return {"ImageId": image.image_id}
