"""StopInstances and StartInstances.

Only an instance whose root device is an EBS volume can be stopped (its disk outlives the domain). Koala's
instances boot from instance-store images (the root disk is a copy on the node, gone with the domain), so Stop is
refused as EC2 refuses it for such instances, with UnsupportedOperation, and Start finds no stopped instance.
The checks come first for every id named, so nothing happens to any of them when one is refused.
"""

from __future__ import annotations

from typing import Any

from services.cloud_controller.actions import Context, action
from services.cloud_controller.actions.instances import compute
from services.cloud_controller.compute.store import Instance
from services.cloud_controller.ec2.errors import Ec2Error, invalid

MAX_IDS = 1000


def _instances(ctx: Context, params: dict[str, Any]) -> list[Instance]:
    ids = list(dict.fromkeys(params.get("InstanceIds") or []))
    if not ids:
        raise Ec2Error("MissingParameter", "The request must contain the parameter InstanceId")
    if len(ids) > MAX_IDS:
        raise invalid("InstanceIds", f"{len(ids)} ids", f"At most {MAX_IDS} ids per request.")
    return compute(ctx).instances(ids, ctx.principal)


@action("StopInstances")
async def stop_instances(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    instances = _instances(ctx, params)
    ended = [i for i in instances if i.state in ("terminated", "shutting-down")]
    if ended:
        raise Ec2Error(
            "IncorrectInstanceState",
            f"This instance '{ended[0].instance_id}' is not in a state from which it can be stopped.",
        )
    raise Ec2Error(
        "UnsupportedOperation",
        f"The instance '{instances[0].instance_id}' does not have an 'ebs' root device type and cannot be stopped.",
    )


@action("StartInstances")
async def start_instances(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    instances = _instances(ctx, params)  # none is stopped: only EBS-backed instances can be
    raise Ec2Error(
        "IncorrectInstanceState",
        f"The instance '{instances[0].instance_id}' is not in a state from which it can be started.",
    )
