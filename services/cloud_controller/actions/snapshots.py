"""EBS snapshots: CreateSnapshot, DeleteSnapshot, DescribeSnapshots (OwnerIds, RestorableByUserIds, filters,
paging) and Describe/Modify/ResetSnapshotAttribute (createVolumePermission). Logic in `ctx.clc.ebs`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.cloud_controller.actions import Context, action, tags
from services.cloud_controller.actions.volumes import ebs, id_list, page
from services.cloud_controller.ebs.store import Snapshot
from services.cloud_controller.ec2.errors import Ec2Error, invalid
from services.cloud_controller.ec2.filters import Filters

MAX_PERMISSIONS = 100


def snapshot_dict(snapshot: Snapshot, tag_list: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {
        "SnapshotId": snapshot.snapshot_id,
        "VolumeId": snapshot.volume_id,
        "State": snapshot.state,
        "StateMessage": snapshot.detail or None,
        "StartTime": snapshot.start_time,
        "Progress": f"{snapshot.progress}%",
        "OwnerId": snapshot.owner_id,
        "Description": snapshot.description,
        "VolumeSize": snapshot.volume_size,
        "Encrypted": False,
        "StorageTier": "standard",
        "Tags": tag_list or None,
    }


SNAPSHOT_FILTERS: dict[str, Callable[[Snapshot], Any]] = {
    "snapshot-id": lambda s: s.snapshot_id,
    "volume-id": lambda s: s.volume_id,
    "status": lambda s: s.state,
    "owner-id": lambda s: s.owner_id,
    "volume-size": lambda s: str(s.volume_size),
    "progress": lambda s: f"{s.progress}%",
    "description": lambda s: s.description,
    "encrypted": lambda s: "false",
    "storage-tier": lambda s: "standard",
}


@action("CreateSnapshot")
async def create_snapshot(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    tag_list = tags.tag_specifications(params, "snapshot")
    snapshot = await ebs(ctx).create_snapshot(ctx.principal, params["VolumeId"], params.get("Description") or "")
    if tag_list:
        await tags.tag_created(ctx, "snapshot", [snapshot.snapshot_id], tag_list)
    tag_sets = await ctx.compute.tags.tags_for([snapshot.snapshot_id]) if tag_list else {}
    return snapshot_dict(snapshot, tag_sets.get(snapshot.snapshot_id))


@action("DeleteSnapshot")
async def delete_snapshot(ctx: Context, params: dict[str, Any]) -> None:
    await ebs(ctx).delete_snapshot(ctx.principal, params["SnapshotId"])
    return None


def _owner_matches(snapshot: Snapshot, owners: list[str], me: str) -> bool:
    return any(snapshot.owner_id == (me if owner == "self" else owner) for owner in owners)


def _restorable_by(snapshot: Snapshot, users: list[str], me: str) -> bool:
    for user in users:
        if user == "all" and snapshot.public:
            return True
        account = me if user == "self" else user
        if user != "all" and (snapshot.restorable_by(account)):
            return True
    return False


@action("DescribeSnapshots")
async def describe_snapshots(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    engine = ebs(ctx)
    me = ctx.owner_id
    wanted = id_list(params, "SnapshotIds")
    owners = params.get("OwnerIds") or []
    restorable = params.get("RestorableByUserIds") or []
    if len(owners) > MAX_PERMISSIONS or len(restorable) > MAX_PERMISSIONS:
        raise invalid("OwnerIds", len(owners) + len(restorable), f"At most {MAX_PERMISSIONS} values.")
    filters = Filters.parse(params.get("Filters"), set(SNAPSHOT_FILTERS), tags=True)
    if wanted:
        found = [engine.snapshot(s, ctx.principal, restore=True) for s in wanted]
    else:
        found = [s for s in engine.store.snapshots.values() if s.restorable_by(me)]
    if owners:
        found = [s for s in found if _owner_matches(s, owners, me)]
    if restorable:
        found = [s for s in found if _restorable_by(s, restorable, me)]
    if filters.tags:
        matching: set[str] = set()
        for owner in {s.owner_id for s in found}:
            matching |= await ctx.compute.tags.ids_matching(owner, filters.tags) or set()
        found = [s for s in found if s.snapshot_id in matching]
    if filters.by_name:
        found = [s for s in found if all(filters.match(n, SNAPSHOT_FILTERS[n](s)) for n in filters.by_name)]
    chosen, token = page(found, lambda s: s.snapshot_id, params, "SnapshotIds", 1000)
    # Tags are the owner's: another account sees a shared snapshot without them.
    tag_sets = await ctx.compute.tags.tags_for([s.snapshot_id for s in chosen if s.owner_id == me]) if chosen else {}
    return {"Snapshots": [snapshot_dict(s, tag_sets.get(s.snapshot_id)) for s in chosen], "NextToken": token}


def _attribute(params: dict[str, Any]) -> str:
    attribute = str(params["Attribute"])
    if attribute not in ("createVolumePermission", "productCodes"):
        raise invalid("Attribute", attribute, "createVolumePermission or productCodes.")
    return attribute


@action("DescribeSnapshotAttribute")
async def describe_snapshot_attribute(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    attribute = _attribute(params)
    snapshot = ebs(ctx).snapshot(params["SnapshotId"], ctx.principal)
    if attribute == "productCodes":
        return {"SnapshotId": snapshot.snapshot_id, "ProductCodes": []}
    permissions = [{"Group": "all"}] if snapshot.public else []
    permissions += [{"UserId": account} for account in sorted(snapshot.permissions)]
    return {"SnapshotId": snapshot.snapshot_id, "CreateVolumePermissions": permissions}


def _accounts(items: list[dict[str, Any]]) -> set[str]:
    found = set()
    for item in items:
        group, user = item.get("Group"), item.get("UserId")
        if group is not None:
            if group != "all":
                raise invalid("Group", group, "The only group is 'all'.")
            found.add("all")
        if user is not None:
            if not user.isdigit() or len(user) != 12:
                raise invalid("UserId", user, "An account id is 12 digits.")
            found.add(user)
    return found


@action("ModifySnapshotAttribute")
async def modify_snapshot_attribute(ctx: Context, params: dict[str, Any]) -> None:
    engine = ebs(ctx)
    snapshot = engine.snapshot(params["SnapshotId"], ctx.principal)
    if (params.get("Attribute") or "createVolumePermission") != "createVolumePermission":
        raise invalid("Attribute", params["Attribute"], "Only createVolumePermission can be modified.")
    permission = params.get("CreateVolumePermission") or {}
    add, remove = _accounts(permission.get("Add") or []), _accounts(permission.get("Remove") or [])
    operation = params.get("OperationType")
    flat = _accounts([{"UserId": u} for u in params.get("UserIds") or []] + [
        {"Group": g} for g in params.get("GroupNames") or []])  # fmt: skip
    if flat:
        if operation not in ("add", "remove"):
            raise Ec2Error("MissingParameter", "The request must contain the parameter OperationType")
        (add if operation == "add" else remove).update(flat)
    if not add and not remove:
        raise Ec2Error("MissingParameter", "The request must contain the parameter CreateVolumePermission")
    if len(snapshot.permissions | add) > MAX_PERMISSIONS:
        raise invalid("CreateVolumePermission", len(add), f"At most {MAX_PERMISSIONS} accounts per snapshot.")
    await engine.set_permissions(snapshot, add, remove)
    return None


@action("ResetSnapshotAttribute")
async def reset_snapshot_attribute(ctx: Context, params: dict[str, Any]) -> None:
    engine = ebs(ctx)
    snapshot = engine.snapshot(params["SnapshotId"], ctx.principal)
    if params["Attribute"] != "createVolumePermission":
        raise invalid("Attribute", params["Attribute"], "Only createVolumePermission can be reset.")
    await engine.set_permissions(snapshot, set(), set(), reset=True)
    return None
