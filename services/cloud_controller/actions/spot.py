"""Spot requests: Koala's best-effort leases in EC2's shapes (the price is always zero: a spot request is a
priority, not a bid). RequestSpotInstances, DescribeSpotInstanceRequests, CancelSpotInstanceRequests; RunInstances
with InstanceMarketOptions goes through `run_spot` from actions/instances.py. The queue, its backfilling and the
preemptions are leases/spot.py's."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

from services.cloud_controller.actions import Context, action
from services.cloud_controller.actions.launch import launch_access
from services.cloud_controller.ec2.errors import Ec2Error, invalid
from services.cloud_controller.ec2.filters import Filters
from services.cloud_controller.leases.spot import Owner, SpotQueue, check_interruption
from services.cloud_controller.leases.store import SpotRequest

MAX_IDS = 1000
MAX_RESULTS = 1000
FILTERS = {
    "spot-instance-request-id",
    "state",
    "status-code",
    "type",
    "instance-id",
    "launch.instance-type",
    "launch.image-id",
    "launched-availability-zone",
}


def queue(ctx: Context) -> SpotQueue:
    return ctx.clc.leases.spot


def _epoch(value: Any) -> float | None:
    return value.timestamp() if isinstance(value, dt.datetime) else None


async def launch_spec(ctx: Context, spec: dict[str, Any]) -> dict[str, Any]:
    """Check a launch specification now (image, key pair, groups) and keep what a later launch needs."""
    engine = ctx.clc.compute
    image_id = spec.get("ImageId") or ""
    if not image_id:
        raise Ec2Error("MissingParameter", "The request must contain the parameter ImageId")
    engine.image(image_id, ctx.principal, "machine")
    key_name = spec.get("KeyName") or ""
    key_material, resolved = await launch_access(ctx, spec)
    user_data = spec.get("UserData") or ""
    if isinstance(user_data, bytes):
        user_data = base64.b64encode(user_data).decode()
    from services.cloud_controller.compute.launch import decode_user_data

    return {
        "image_id": image_id,
        "instance_type": spec.get("InstanceType") or "m1.small",
        "key_name": key_name,
        "key_material": key_material,
        "groups": [g["name"] for g in resolved],
        "group_ids": [g["group_id"] for g in resolved],
        "user_data": decode_user_data(user_data),
        "kernel_id": spec.get("KernelId") or "",
        "ramdisk_id": spec.get("RamdiskId") or "",
        "zone": (spec.get("Placement") or {}).get("AvailabilityZone") or "",
    }


def request_dict(request: SpotRequest) -> dict[str, Any]:
    spec = request.spec
    launch: dict[str, Any] = {
        "ImageId": spec.get("image_id"),
        "InstanceType": spec.get("instance_type"),
        "KeyName": spec.get("key_name") or None,
        "SecurityGroups": [
            {"GroupName": name, "GroupId": gid}
            for name, gid in zip(spec.get("groups", []), spec.get("group_ids", []), strict=False)
        ]
        or None,
        "KernelId": spec.get("kernel_id") or None,
        "RamdiskId": spec.get("ramdisk_id") or None,
        "Placement": {"AvailabilityZone": spec["zone"]} if spec.get("zone") else None,
    }
    return {
        "SpotInstanceRequestId": request.request_id,
        "SpotPrice": "0.000000",
        "Type": request.type,
        "State": request.state,
        "Status": {"Code": request.status_code, "Message": request.status_message, "UpdateTime": request.status_time},
        "LaunchSpecification": launch,
        "InstanceId": request.instance_id or None,
        "CreateTime": request.create_time,
        "ValidUntil": request.valid_until,
        "LaunchedAvailabilityZone": request.zone if request.instance_id else None,
        "ProductDescription": "Linux/UNIX",
        "InstanceInterruptionBehavior": request.interruption,
        "BlockDurationMinutes": int(request.duration // 60) if request.duration else None,
    }


@action("RequestSpotInstances")
async def request_spot_instances(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    spec = await launch_spec(ctx, params.get("LaunchSpecification") or {})
    minutes = params.get("BlockDurationMinutes")
    made = await queue(ctx).request(
        Owner(ctx.owner_id, ctx.principal.user_id),
        spec,
        params.get("InstanceCount") or 1,
        params.get("Type") or "one-time",
        params.get("InstanceInterruptionBehavior") or "terminate",
        _epoch(params.get("ValidUntil")),
        minutes * 60.0 if minutes else None,
        params.get("ClientToken") or "",
    )
    return {"SpotInstanceRequests": [request_dict(r) for r in made]}


@action("DescribeSpotInstanceRequests")
async def describe_spot_instance_requests(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    spot = queue(ctx)
    wanted = params.get("SpotInstanceRequestIds") or []
    if len(wanted) > MAX_IDS:
        raise invalid("SpotInstanceRequestIds", len(wanted), f"At most {MAX_IDS} ids per request.")
    filters = Filters.parse(params.get("Filters"), FILTERS, tags=False)
    if wanted:
        found = [spot.get(ctx.owner_id, i) for i in dict.fromkeys(wanted)]
    else:
        found = sorted((r for r in spot.store.spot.values() if r.owner_id == ctx.owner_id), key=lambda r: r.position)
    selected = [
        r
        for r in found
        if filters.match_all(
            {
                "spot-instance-request-id": r.request_id,
                "state": r.state,
                "status-code": r.status_code,
                "type": r.type,
                "instance-id": r.instance_id,
                "launch.instance-type": r.spec.get("instance_type", ""),
                "launch.image-id": r.spec.get("image_id", ""),
                "launched-availability-zone": r.zone if r.instance_id else "",
            }
        )
    ]
    limit = params.get("MaxResults") or MAX_RESULTS
    if not 5 <= limit <= MAX_RESULTS and not wanted:
        raise invalid("MaxResults", limit, f"Between 5 and {MAX_RESULTS}.")
    start = 0
    if params.get("NextToken"):
        try:
            start = int(params["NextToken"])
        except ValueError:
            raise invalid("NextToken", params["NextToken"]) from None
    page = selected[start : start + limit]
    following = str(start + limit) if start + limit < len(selected) else None
    return {"SpotInstanceRequests": [request_dict(r) for r in page], "NextToken": following}


@action("CancelSpotInstanceRequests")
async def cancel_spot_instance_requests(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    wanted = list(dict.fromkeys(params.get("SpotInstanceRequestIds") or []))
    if not wanted:
        raise Ec2Error("MissingParameter", "The request must contain the parameter SpotInstanceRequestIds")
    if len(wanted) > MAX_IDS:
        raise invalid("SpotInstanceRequestIds", len(wanted), f"At most {MAX_IDS} ids per request.")
    found = await queue(ctx).cancel(ctx.owner_id, wanted)
    return {"CancelledSpotInstanceRequests": [{"SpotInstanceRequestId": r.request_id, "State": r.state} for r in found]}


def market_options(params: dict[str, Any]) -> tuple[str, float | None] | None:
    """RunInstances' InstanceMarketOptions: (interruption behaviour, ValidUntil) for spot, None for on-demand."""
    market = params.get("InstanceMarketOptions") or {}
    if not market:
        return None
    if market.get("MarketType") not in (None, "spot"):
        raise invalid("InstanceMarketOptions.MarketType", market.get("MarketType"), "Only spot is offered.")
    options = market.get("SpotOptions") or {}
    if options.get("SpotInstanceType") not in (None, "one-time"):
        raise Ec2Error(
            "InvalidParameterCombination", "RunInstances launches one-time spot instances; use RequestSpotInstances"
        )
    interruption = options.get("InstanceInterruptionBehavior") or "terminate"
    check_interruption(interruption)
    return interruption, _epoch(options.get("ValidUntil"))
