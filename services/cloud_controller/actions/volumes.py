"""EBS volumes: CreateVolume, DeleteVolume, DescribeVolumes, DescribeVolumeStatus, DescribeVolumeAttribute,
AttachVolume, DetachVolume. The logic is the EBS engine's (`ctx.clc.ebs`, services/cloud_controller/ebs/); this
module parses and shapes answers as botocore's model has them. Paging helpers are shared with snapshots.py."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, TypeVar

from services.cloud_controller.actions import Context, action, tags
from services.cloud_controller.ebs.engine import Ebs
from services.cloud_controller.ebs.store import Volume
from services.cloud_controller.ec2.errors import Ec2Error, invalid
from services.cloud_controller.ec2.filters import Filters

MAX_IDS = 1000


def ebs(ctx: Context) -> Ebs:
    return ctx.clc.ebs


T = TypeVar("T")


def id_list(params: dict[str, Any], key: str) -> list[str]:
    values = params.get(key) or []
    if len(values) > MAX_IDS:
        raise invalid(key, f"{len(values)} ids", f"At most {MAX_IDS} ids per request.")
    return list(dict.fromkeys(values))


def page(
    items: list[T], key: Callable[[T], str], params: dict[str, Any], ids_param: str, most: int
) -> tuple[list[T], str | None]:
    """Sort by `key` and cut one page: MaxResults (5..most) and NextToken, never together with explicit ids."""
    max_results, token = params.get("MaxResults"), params.get("NextToken")
    items = sorted(items, key=key)
    if token:
        try:
            after = base64.urlsafe_b64decode(token.encode()).decode() if len(token) <= 256 else ""
        except (binascii.Error, UnicodeDecodeError, ValueError):
            after = ""
        if not after:
            raise Ec2Error("InvalidNextToken", "The token is not valid")
        items = [i for i in items if key(i) > after]
    if max_results is None:
        return items, None
    if params.get(ids_param):
        raise Ec2Error("InvalidParameterCombination", f"The parameter {ids_param} cannot be used with MaxResults")
    if not 5 <= max_results <= most:
        raise invalid("MaxResults", max_results, f"The value must be between 5 and {most}.")
    if len(items) <= max_results:
        return items, None
    chosen = items[:max_results]
    return chosen, base64.urlsafe_b64encode(key(chosen[-1]).encode()).decode()


async def tagged(ctx: Context, filters: Filters) -> set[str] | None:
    return await ctx.compute.tags.ids_matching(ctx.owner_id, filters.tags)


# --- shapes ------------------------------------------------------------------------------------------------
def attachment_dict(volume: Volume) -> dict[str, Any]:
    return {
        "VolumeId": volume.volume_id,
        "InstanceId": volume.instance_id,
        "Device": volume.device,
        "State": volume.attach_state or "detached",
        "AttachTime": volume.attach_time or None,
        "DeleteOnTermination": volume.delete_on_termination,
    }


def volume_dict(volume: Volume, tag_list: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {
        "VolumeId": volume.volume_id,
        "Size": volume.size_gb,
        "SnapshotId": volume.snapshot_id or "",
        "AvailabilityZone": volume.zone,
        "State": volume.state,
        "CreateTime": volume.create_time,
        "Attachments": [attachment_dict(volume)] if volume.attach_state else [],
        "VolumeType": volume.volume_type,
        "Encrypted": False,
        "MultiAttachEnabled": False,
        "Tags": tag_list or None,
    }


VOLUME_FILTERS: dict[str, Callable[[Volume], Any]] = {
    "volume-id": lambda v: v.volume_id,
    "status": lambda v: v.state,
    "size": lambda v: str(v.size_gb),
    "availability-zone": lambda v: v.zone,
    "snapshot-id": lambda v: v.snapshot_id,
    "volume-type": lambda v: v.volume_type,
    "encrypted": lambda v: "false",
    "multi-attach-enabled": lambda v: "false",
    "attachment.instance-id": lambda v: v.instance_id,
    "attachment.device": lambda v: v.device,
    "attachment.status": lambda v: v.attach_state,
    "attachment.delete-on-termination": lambda v: "true" if v.delete_on_termination else "false",
}


async def select(ctx: Context, params: dict[str, Any], allowed: set[str]) -> list[Volume]:
    engine = ebs(ctx)
    wanted = id_list(params, "VolumeIds")
    filters = Filters.parse(params.get("Filters"), allowed, tags=True)
    if wanted:
        found = [engine.volume(v, ctx.principal) for v in wanted]  # each must exist and be the caller's
    else:
        found = [v for v in engine.store.volumes.values() if v.owner_id == ctx.owner_id]
    if filters.tags:
        matching = await tagged(ctx, filters) or set()
        found = [v for v in found if v.volume_id in matching]
    if filters.by_name:
        found = [v for v in found if all(filters.match(n, VOLUME_FILTERS[n](v)) for n in filters.by_name)]
    return found


# --- actions -----------------------------------------------------------------------------------------------
@action("CreateVolume")
async def create_volume(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    tag_list = tags.tag_specifications(params, "volume")
    for unsupported in ("Encrypted", "MultiAttachEnabled"):
        if params.get(unsupported):
            raise Ec2Error("InvalidParameterValue", f"{unsupported} volumes are not supported here.")
    if params.get("Iops") is not None:
        raise Ec2Error("InvalidParameterCombination", "Iops is not supported for standard volumes.")
    zone = params.get("AvailabilityZone") or ""
    if not zone:
        raise Ec2Error("MissingParameter", "The request must contain the parameter AvailabilityZone")
    known = bool(params.get("ClientToken")) and (ctx.owner_id, params["ClientToken"]) in ebs(ctx).store.tokens
    volume = await ebs(ctx).create_volume(
        ctx.principal,
        zone,
        params.get("Size"),
        params.get("SnapshotId") or "",
        params.get("VolumeType") or "",
        params.get("ClientToken") or "",
    )
    if tag_list and not known:
        await tags.tag_created(ctx, "volume", [volume.volume_id], tag_list)
    tag_sets = await ctx.compute.tags.tags_for([volume.volume_id])
    return volume_dict(volume, tag_sets.get(volume.volume_id))


@action("DeleteVolume")
async def delete_volume(ctx: Context, params: dict[str, Any]) -> None:
    await ebs(ctx).delete_volume(ctx.principal, params["VolumeId"])
    return None


@action("DescribeVolumes")
async def describe_volumes(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    found = await select(ctx, params, set(VOLUME_FILTERS))
    chosen, token = page(found, lambda v: v.volume_id, params, "VolumeIds", 500)
    tag_sets = await ctx.compute.tags.tags_for([v.volume_id for v in chosen]) if chosen else {}
    return {"Volumes": [volume_dict(v, tag_sets.get(v.volume_id)) for v in chosen], "NextToken": token}


STATUS_FILTERS = {"availability-zone", "volume-status.status", "volume-status.details-name",
                  "volume-status.details-status", "action.code", "event.type"}  # fmt: skip


def _status(volume: Volume) -> tuple[str, str]:
    if volume.state in ("available", "in-use"):
        return "ok", "passed"
    if volume.state == "error":
        return "impaired", "failed"
    return "insufficient-data", "insufficient-data"


@action("DescribeVolumeStatus")
async def describe_volume_status(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    found = await select(ctx, {k: v for k, v in params.items() if k != "Filters"}, set())
    filters = Filters.parse(params.get("Filters"), STATUS_FILTERS, tags=False)
    matching = []
    for volume in found:
        status, detail = _status(volume)
        values = {
            "availability-zone": volume.zone,
            "volume-status.status": status,
            "volume-status.details-name": ["io-enabled", "io-performance"],
            "volume-status.details-status": [detail, "not-applicable"],
            "action.code": [],
            "event.type": [],
        }
        if filters.match_all(values):
            matching.append(volume)
    chosen, token = page(matching, lambda v: v.volume_id, params, "VolumeIds", 1000)
    statuses = []
    for volume in chosen:
        status, detail = _status(volume)
        statuses.append(
            {
                "VolumeId": volume.volume_id,
                "AvailabilityZone": volume.zone,
                "VolumeStatus": {
                    "Status": status,
                    "Details": [
                        {"Name": "io-enabled", "Status": detail},
                        {"Name": "io-performance", "Status": "not-applicable"},
                    ],
                },
                "Events": [],
                "Actions": [],
            }
        )
    return {"VolumeStatuses": statuses, "NextToken": token}


@action("DescribeVolumeAttribute")
async def describe_volume_attribute(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    volume = ebs(ctx).volume(params["VolumeId"], ctx.principal)
    attribute = params["Attribute"]
    if attribute == "autoEnableIO":
        return {"VolumeId": volume.volume_id, "AutoEnableIO": {"Value": False}}
    if attribute == "productCodes":
        return {"VolumeId": volume.volume_id, "ProductCodes": []}
    raise invalid("Attribute", attribute, "autoEnableIO or productCodes.")


@action("AttachVolume")
async def attach_volume(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    volume = await ebs(ctx).attach(ctx.principal, params["VolumeId"], params["InstanceId"], params["Device"])
    return attachment_dict(volume)


@action("DetachVolume")
async def detach_volume(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    engine = ebs(ctx)
    volume = engine.volume(params["VolumeId"], ctx.principal)
    before = attachment_dict(volume)
    volume = await engine.detach(
        ctx.principal, params["VolumeId"], params.get("InstanceId") or "", params.get("Device") or "",
        bool(params.get("Force")),
    )  # fmt: skip
    answer = {**before, "State": volume.attach_state or "detached"}
    if not volume.attach_state:
        answer["State"] = "detached"
    return answer
