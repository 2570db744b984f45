"""DescribeRegions and DescribeAccountAttributes: one region (this CLC), EC2-Classic only."""

from __future__ import annotations

from typing import Any

from services.cloud_controller.actions import Context, action
from services.cloud_controller.ec2.errors import Ec2Error
from services.cloud_controller.ec2.filters import Filters


@action("DescribeRegions")
async def describe_regions(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    name = ctx.clc.config.KOALA_REGION
    endpoint = ctx.clc.config.ec2_url()
    wanted = params.get("RegionNames") or []
    for region in wanted:
        if region != name:
            raise Ec2Error("InvalidParameterValue", f"Invalid region: {region[:64]}")
    filters = Filters.parse(params.get("Filters"), {"endpoint", "region-name", "opt-in-status"}, tags=False)
    region = {"RegionName": name, "Endpoint": endpoint, "OptInStatus": "opt-in-not-required"}
    ok = filters.match_all({"endpoint": endpoint, "region-name": name, "opt-in-status": region["OptInStatus"]})
    return {"Regions": [region] if ok else []}


def _attributes(ctx: Context) -> dict[str, list[str]]:
    return {"supported-platforms": ["EC2"], "default-vpc": ["none"]}


@action("DescribeAccountAttributes")
async def describe_account_attributes(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    attributes = _attributes(ctx)
    wanted = params.get("AttributeNames") or list(attributes)
    answer = []
    for name in wanted:
        if name not in attributes:
            raise Ec2Error("InvalidParameterValue", f"Invalid attribute name: {name[:64]}")
        answer.append(
            {"AttributeName": name, "AttributeValues": [{"AttributeValue": value} for value in attributes[name]]}
        )
    return {"AccountAttributes": answer}
