"""Images: RegisterImage, DeregisterImage, DescribeImages, Describe/Modify/ResetImageAttribute.
The registry is `compute.images.Images` (`ctx.clc.compute.images`); this module shapes EC2's answers."""

from __future__ import annotations

import datetime as dt
from typing import Any

from services.cloud_controller.actions import Context, action, tags
from services.cloud_controller.compute.images import Images
from services.cloud_controller.compute.store import Image
from services.cloud_controller.ebs.roots import parse_mappings
from services.cloud_controller.ec2 import paging
from services.cloud_controller.ec2.errors import Ec2Error, invalid
from services.cloud_controller.ec2.filters import Filters

MAX_IDS = 1000
IMAGE_FILTERS = {
    "image-id",
    "image-type",
    "is-public",
    "kernel-id",
    "ramdisk-id",
    "manifest-location",
    "name",
    "description",
    "owner-id",
    "owner-alias",
    "state",
    "architecture",
    "root-device-type",
    "block-device-mapping.snapshot-id",
    "block-device-mapping.device-name",
    "root-device-name",
    "virtualization-type",
    "hypervisor",
}


def registry(ctx: Context) -> Images:
    return ctx.clc.compute.images


async def _admin_account(ctx: Context) -> str:
    return await ctx.clc.identity_store.admin_account_id() or ""


def image_dict(image: Image, admin_account: str, tag_list: list[dict[str, str]] | None) -> dict[str, Any]:
    return {
        "ImageId": image.image_id,
        "ImageLocation": image.location,
        "State": image.state,
        "OwnerId": image.owner_id,
        "CreationDate": _iso(image.created_at),
        "Public": image.is_public,
        "Architecture": image.architecture,
        "ImageType": image.kind,
        "KernelId": image.kernel_id or None,
        "RamdiskId": image.ramdisk_id or None,
        "ImageOwnerAlias": "eucalyptus" if image.owner_id == admin_account else None,
        "Name": image.name,
        "Description": image.description or None,
        "RootDeviceType": image.root_device_type,
        "RootDeviceName": image.root_device_name,
        "BlockDeviceMappings": mapping_list(image),
        "VirtualizationType": "paravirtual",
        "Hypervisor": "xen",
        "ProductCodes": _product_codes(image),
        "Tags": tag_list or None,
    }


def mapping_list(image: Image) -> list[dict[str, Any]]:
    return [
        {
            "DeviceName": m["device"],
            "Ebs": {
                "SnapshotId": m["snapshot_id"] or None,
                "VolumeSize": m["size"],
                "DeleteOnTermination": m["delete_on_termination"],
                "VolumeType": "standard",
            },
        }
        for m in image.block_devices
    ]


def _product_codes(image: Image) -> list[dict[str, str]]:
    return [{"ProductCodeId": code, "ProductCodeType": "devpay"} for code in sorted(image.product_codes)]


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _filter_values(image: Image, admin_account: str) -> dict[str, Any]:
    return {
        "image-id": image.image_id,
        "image-type": image.kind,
        "is-public": "true" if image.is_public else "false",
        "kernel-id": image.kernel_id,
        "ramdisk-id": image.ramdisk_id,
        "manifest-location": image.location,
        "name": image.name,
        "description": image.description,
        "owner-id": image.owner_id,
        "owner-alias": "eucalyptus" if image.owner_id == admin_account else "",
        "state": image.state,
        "architecture": image.architecture,
        "root-device-type": image.root_device_type,
        "block-device-mapping.snapshot-id": [m["snapshot_id"] for m in image.block_devices],
        "block-device-mapping.device-name": [m["device"] for m in image.block_devices],
        "root-device-name": image.root_device_name,
        "virtualization-type": "paravirtual",
        "hypervisor": "xen",
    }


@action("RegisterImage")
async def register_image(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    location = params.get("ImageLocation")
    mappings = parse_mappings(params.get("BlockDeviceMappings"))
    tag_list = tags.tag_specifications(params, "image")
    if not location and any(m.get("snapshot_id") for m in mappings):
        image = await _register_ebs(ctx, params, mappings)
        if tag_list:
            await tags.tag_created(ctx, "image", [image.image_id], tag_list)
        return {"ImageId": image.image_id}
    if not location:
        raise Ec2Error("MissingParameter", "The request must contain the parameter ImageLocation")
    if mappings:
        raise Ec2Error(
            "InvalidParameterCombination", "EBS mappings belong to EBS-backed images (no ImageLocation) here"
        )
    image = await registry(ctx).register(
        ctx.owner_id,
        location,
        name=params.get("Name") or "",
        description=params.get("Description") or "",
        architecture=params.get("Architecture") or "",
        kernel_id=params.get("KernelId") or "",
        ramdisk_id=params.get("RamdiskId") or "",
        root_device_name=params.get("RootDeviceName") or "",
    )
    if tag_list:
        await tags.tag_created(ctx, "image", [image.image_id], tag_list)
    return {"ImageId": image.image_id}


async def _register_ebs(ctx: Context, params: dict[str, Any], mappings: list[dict[str, Any]]) -> Image:
    """An EBS-backed image: its root device's mapping names a snapshot (ebs/roots.py checks them)."""
    roots = ctx.clc.compute.roots
    if roots is None:
        raise Ec2Error("UnsupportedOperation", "This cloud has no block storage for EBS-backed images")
    if not params.get("Name"):
        raise Ec2Error("MissingParameter", "The request must contain the parameter Name")
    root_device = params.get("RootDeviceName") or "/dev/sda1"
    checked = roots.check_image_mappings(ctx.principal, root_device, mappings)
    return await registry(ctx).register_ebs(
        ctx.owner_id,
        params["Name"],
        description=params.get("Description") or "",
        architecture=params.get("Architecture") or "",
        kernel_id=params.get("KernelId") or "",
        ramdisk_id=params.get("RamdiskId") or "",
        root_device_name=root_device,
        block_devices=checked,
    )


@action("DeregisterImage")
async def deregister_image(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    image_id = params["ImageId"]
    await registry(ctx).deregister(image_id, ctx.owner_id, False)
    await ctx.compute.tags.forget([image_id.lower()])
    return {"Return": True}


@action("DescribeImages")
async def describe_images(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    images = registry(ctx)
    ids = params.get("ImageIds") or []
    owners = params.get("Owners") or []
    executable = params.get("ExecutableUsers") or []
    for name, values in (("ImageId", ids), ("Owner", owners), ("ExecutableBy", executable)):
        if len(values) > MAX_IDS:
            raise invalid(name, len(values), f"At most {MAX_IDS} values.")
    if params.get("MaxResults") is not None and ids:
        raise Ec2Error("InvalidParameterCombination", "The parameter ImageIds cannot be used with MaxResults")
    admin_account = await _admin_account(ctx)
    images.is_admin_account = lambda account: account == admin_account
    filters = Filters.parse(params.get("Filters"), IMAGE_FILTERS, tags=True)
    found = images.visible(ctx.owner_id, False, ids, owners, executable)
    if filters.tags:
        tagged: set[str] = set()
        for owner in {i.owner_id for i in found}:
            tagged |= await ctx.compute.tags.ids_matching(owner, filters.tags) or set()
        found = [i for i in found if i.image_id in tagged]
    found = [i for i in found if filters.match_all(_filter_values(i, admin_account))]
    found, next_token = paging.cut(found, lambda i: i.image_id, params, 5, 1000)
    tag_sets = await ctx.compute.tags.tags_for([i.image_id for i in found]) if found else {}
    return {"Images": [image_dict(i, admin_account, tag_sets.get(i.image_id)) for i in found], "NextToken": next_token}


@action("DescribeImageAttribute")
async def describe_image_attribute(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    image = registry(ctx).owned(params["ImageId"], ctx.owner_id, False)
    attribute = params["Attribute"]
    result: dict[str, Any] = {"ImageId": image.image_id}
    if attribute == "launchPermission":
        permissions = [{"Group": "all"}] if image.is_public else []
        permissions += [{"UserId": account} for account in sorted(image.launch_permissions)]
        result["LaunchPermissions"] = permissions
    elif attribute == "description":
        result["Description"] = {"Value": image.description or None}
    elif attribute == "kernel":
        result["KernelId"] = {"Value": image.kernel_id or None}
    elif attribute == "ramdisk":
        result["RamdiskId"] = {"Value": image.ramdisk_id or None}
    elif attribute == "productCodes":
        result["ProductCodes"] = [
            {"ProductCodeId": c, "ProductCodeType": "devpay"} for c in sorted(image.product_codes)
        ]
    elif attribute == "blockDeviceMapping":
        result["BlockDeviceMappings"] = mapping_list(image)
    else:
        raise invalid("Attribute", attribute, "Not supported for this image.")
    return result


@action("ModifyImageAttribute")
async def modify_image_attribute(ctx: Context, params: dict[str, Any]) -> None:
    images = registry(ctx)
    image = images.owned(params["ImageId"], ctx.owner_id, False)
    attribute = params.get("Attribute") or ""
    launch = params.get("LaunchPermission") or {}
    user_ids, user_groups = params.get("UserIds") or [], params.get("UserGroups") or []
    if launch or user_ids or user_groups or attribute == "launchPermission":
        add, remove = list(launch.get("Add") or []), list(launch.get("Remove") or [])
        if user_ids or user_groups:  # the flat form: OperationType add|remove with UserId.N / UserGroup.N
            operation = params.get("OperationType")
            if operation not in ("add", "remove"):
                raise invalid("OperationType", operation, "Use add or remove.")
            items = [{"UserId": u} for u in user_ids] + [{"Group": g} for g in user_groups]
            (add if operation == "add" else remove).extend(items)
        if len(add) + len(remove) > MAX_IDS:
            raise invalid("LaunchPermission", len(add) + len(remove), f"At most {MAX_IDS} changes.")
        await images.modify_launch_permission(image, add, remove)
        return None
    if params.get("ProductCodes") or attribute == "productCodes":
        await images.add_product_codes(image, list(params.get("ProductCodes") or []))
        return None
    if params.get("Description") is not None:
        await images.set_attribute(image, "description", params["Description"].get("Value") or "", ctx.owner_id)
        return None
    if attribute in ("description", "kernel", "ramdisk"):
        await images.set_attribute(image, attribute, params.get("Value") or "", ctx.owner_id)
        return None
    raise Ec2Error("InvalidParameterCombination", "Give LaunchPermission, Description, or Attribute with Value")


@action("ResetImageAttribute")
async def reset_image_attribute(ctx: Context, params: dict[str, Any]) -> None:
    images = registry(ctx)
    image = images.owned(params["ImageId"], ctx.owner_id, False)
    attribute = params["Attribute"]
    if attribute == "launchPermission":
        image.is_public = False
        image.launch_permissions.clear()
        await images.modify_launch_permission(image, [], [])
    elif attribute in ("kernel", "ramdisk", "description"):
        await images.set_attribute(image, attribute, "", ctx.owner_id)
    else:
        raise invalid("Attribute", attribute, "Use launchPermission, kernel, ramdisk or description.")
    return None
