"""Instances: RunInstances, DescribeInstances, TerminateInstances, RebootInstances, GetConsoleOutput,
DescribeInstanceAttribute, DescribeInstanceStatus. The logic is the compute engine's (`ctx.clc.compute`); this
module parses and shapes answers as botocore's model has them."""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

from botocore.model import Shape

from services.cloud_controller.actions import Context, action, spot, tags
from services.cloud_controller.actions.launch import launch_access
from services.cloud_controller.compute.attributes import product_codes
from services.cloud_controller.compute.engine import Compute
from services.cloud_controller.compute.launch import RunRequest
from services.cloud_controller.compute.store import STATE_CODES, Instance, Reservation
from services.cloud_controller.ebs.roots import parse_mappings
from services.cloud_controller.ebs.store import Volume
from services.cloud_controller.ec2 import model, xml
from services.cloud_controller.ec2.errors import Ec2Error, invalid
from services.cloud_controller.ec2.filters import Filters
from services.cloud_controller.leases.spot import Owner

MAX_IDS = 1000


def compute(ctx: Context) -> Compute:
    return ctx.clc.compute


def _ids(params: dict[str, Any], key: str = "InstanceIds") -> list[str]:
    values = params.get(key) or []
    if len(values) > MAX_IDS:
        raise invalid(key, f"{len(values)} ids", f"At most {MAX_IDS} ids per request.")
    return list(dict.fromkeys(values))


def state(instance: Instance) -> dict[str, Any]:
    return {"Code": STATE_CODES[instance.state], "Name": instance.state}


def instance_dict(
    instance: Instance,
    reservation: Reservation | None,
    tag_list: list[dict[str, str]] | None,
    codes: list[str] | None = None,
    volumes: list[Volume] | None = None,
) -> dict[str, Any]:
    groups_ = _groups(reservation)
    public = instance.public_ip
    result: dict[str, Any] = {
        "InstanceId": instance.instance_id,
        "ImageId": instance.image_id,
        "State": state(instance),
        "PrivateDnsName": instance.private_ip,
        "PublicDnsName": public or instance.private_ip,
        "StateTransitionReason": instance.state_reason,
        "KeyName": instance.key_name or None,
        "AmiLaunchIndex": instance.launch_index,
        "ProductCodes": product_code_list(codes or []),
        "InstanceType": instance.vm_type,
        "LaunchTime": instance.launch_time,
        "Placement": {"AvailabilityZone": instance.zone, "GroupName": "", "Tenancy": "default"},
        "KernelId": instance.kernel_id or None,
        "RamdiskId": instance.ramdisk_id or None,
        "Monitoring": {"State": "disabled"},
        "PrivateIpAddress": instance.private_ip or None,
        "PublicIpAddress": public or None,
        "Architecture": "x86_64",
        "RootDeviceType": instance.root_device_type,
        "RootDeviceName": instance.root_device_name,
        "BlockDeviceMappings": block_device_list(volumes or []),
        "VirtualizationType": "paravirtual",
        "ClientToken": reservation.client_token if reservation and reservation.client_token else None,
        "Hypervisor": "xen",
        "SecurityGroups": groups_,
        "Tags": tag_list or None,
    }
    if instance.state in ("terminated", "shutting-down") and instance.state_reason:
        result["StateReason"] = state_reason(instance.state_reason)
    return result


def block_device_list(volumes: list[Volume]) -> list[dict[str, Any]]:
    """The instance's EBS volumes (ebs/store.Volume), as EC2's InstanceBlockDeviceMapping."""
    return [
        {
            "DeviceName": v.device,
            "Ebs": {
                "VolumeId": v.volume_id,
                "Status": v.attach_state or "detached",
                "AttachTime": v.attach_time,
                "DeleteOnTermination": v.delete_on_termination,
            },
        }
        for v in volumes
    ]


def volumes_of(engine: Compute, instance: Instance) -> list[Volume]:
    return engine.roots.devices(instance) if engine.roots is not None else []


def product_code_list(codes: list[str]) -> list[dict[str, str]]:
    return [{"ProductCodeId": code, "ProductCodeType": "devpay"} for code in codes]


def state_reason(reason: str) -> dict[str, str]:
    """EC2's StateReason: `Client.UserInitiatedShutdown` for a user's terminate, `Server.*` for failures."""
    if reason == "User initiated":
        return {
            "Code": "Client.UserInitiatedShutdown",
            "Message": "Client.UserInitiatedShutdown: User initiated shutdown",
        }
    code = reason.split(":", 1)[0]
    if not code.startswith(("Server.", "Client.")):
        code = "Server.InternalError"
        reason = f"{code}: {reason}"
    return {"Code": code, "Message": reason}


def _groups(reservation: Reservation | None) -> list[dict[str, str]]:
    if reservation is None:
        return []
    ids = reservation.group_ids + [""] * (len(reservation.groups) - len(reservation.group_ids))
    return [{"GroupName": name, "GroupId": gid} for name, gid in zip(reservation.groups, ids, strict=False)]


def reservation_dict(reservation: Reservation, instances: list[Any]) -> dict[str, Any]:
    """`instances`: each a dict shaped like the model's Instance, or its XML already serialized (xml.Prebuilt)."""
    return {
        "ReservationId": reservation.reservation_id,
        "OwnerId": reservation.owner_id,
        "RequesterId": None,
        "Groups": _groups(reservation),
        "Instances": instances,
    }


def _groups_of(reservation: Reservation | None) -> list[str]:
    return reservation.groups if reservation else []


def _group_ids_of(reservation: Reservation | None) -> list[str]:
    return reservation.group_ids if reservation else []


# Filter name -> its value for (instance, reservation): only the filters a request names are computed.
FILTER_VALUES: dict[str, Callable[[Instance, Reservation | None], Any]] = {
    "instance-id": lambda i, r: i.instance_id,
    "instance-state-name": lambda i, r: i.state,
    "instance-state-code": lambda i, r: str(STATE_CODES[i.state]),
    "instance-type": lambda i, r: i.vm_type,
    "image-id": lambda i, r: i.image_id,
    "kernel-id": lambda i, r: i.kernel_id,
    "ramdisk-id": lambda i, r: i.ramdisk_id,
    "key-name": lambda i, r: i.key_name,
    "availability-zone": lambda i, r: i.zone,
    "reservation-id": lambda i, r: i.reservation_id,
    "owner-id": lambda i, r: i.owner_id,
    "requester-id": lambda i, r: "",
    "private-ip-address": lambda i, r: i.private_ip,
    "ip-address": lambda i, r: i.public_ip,
    "private-dns-name": lambda i, r: i.private_ip,
    "dns-name": lambda i, r: i.public_ip or i.private_ip,
    "launch-index": lambda i, r: str(i.launch_index),
    "group-name": lambda i, r: _groups_of(r),
    "group-id": lambda i, r: _group_ids_of(r),
    "instance.group-name": lambda i, r: _groups_of(r),
    "instance.group-id": lambda i, r: _group_ids_of(r),
    "architecture": lambda i, r: "x86_64",
    "root-device-type": lambda i, r: i.root_device_type,
    "root-device-name": lambda i, r: i.root_device_name,
    "client-token": lambda i, r: r.client_token if r else "",
    "state-reason-code": lambda i, r: state_reason(i.state_reason)["Code"] if i.state_reason else "",
    "hypervisor": lambda i, r: "xen",
    "virtualization-type": lambda i, r: "paravirtual",
}
# Filters on the lease an instance runs in (leases/: a spot request "sir-..." or a capacity reservation "cr-...").
LEASE_FILTER_VALUES: dict[str, Callable[[str], str]] = {
    "instance-lifecycle": lambda lease: "spot" if lease.startswith("sir-") else "",
    "spot-instance-request-id": lambda lease: lease if lease.startswith("sir-") else "",
    "capacity-reservation-id": lambda lease: lease if lease.startswith("cr-") else "",
}
INSTANCE_FILTERS = set(FILTER_VALUES) | set(LEASE_FILTER_VALUES)


def leases_of(engine: Compute) -> dict[str, str]:
    """Instance id -> the lease it was launched into (kept after the instance ends, as EC2 keeps showing it)."""
    return engine.leases.store.lease_of if engine.leases is not None else {}


def lease_fields(lease: str) -> dict[str, str]:
    """DescribeInstances' members for the lease: a spot instance's lifecycle and request, or the reservation."""
    if lease.startswith("sir-"):
        return {"InstanceLifecycle": "spot", "SpotInstanceRequestId": lease}
    if lease.startswith("cr-"):
        return {"CapacityReservationId": lease}
    return {}


# --- paging ----------------------------------------------------------------------------------------------
def _page_key(instance: Instance) -> str:
    """The instance's place in launch order (also what a NextToken holds). Kept per instance while its launch time
    stays: formatting it for ten thousand instances on every DescribeInstances cost a fifth of the request."""
    cached = _PAGE_KEYS.get(instance.instance_id)
    if cached is not None and cached[0] == instance.launch_time:
        return cached[1]
    key = f"{instance.launch_time:017.6f}/{instance.reservation_id}/{instance.launch_index:05d}/{instance.instance_id}"
    _PAGE_KEYS[instance.instance_id] = (instance.launch_time, key)
    return key


_PAGE_KEYS: dict[str, tuple[float, str]] = {}


def _encode_token(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode()


def _decode_token(token: str) -> str:
    try:
        key = base64.urlsafe_b64decode(token.encode()).decode() if len(token) <= 256 else ""
    except (binascii.Error, UnicodeDecodeError, ValueError):
        key = ""
    if key.count("/") != 3:
        raise Ec2Error("InvalidNextToken", "The token is not valid")
    return key


def _page(items: list[Instance], params: dict[str, Any], max_allowed: int = 1000) -> tuple[list[Instance], str | None]:
    """Sort by launch order and cut one page; EC2's MaxResults is 5..1000 and cannot go with InstanceIds."""
    max_results, token = params.get("MaxResults"), params.get("NextToken")
    items.sort(key=_page_key)
    if token:
        start = _decode_token(token)
        items = [i for i in items if _page_key(i) > start]
    if max_results is None:
        return items, None
    if params.get("InstanceIds"):
        raise Ec2Error("InvalidParameterCombination", "The parameter instancesSet cannot be used with maxResults")
    if not 5 <= max_results <= max_allowed:
        raise invalid("MaxResults", max_results, f"The value must be between 5 and {max_allowed}.")
    if len(items) <= max_results:
        return items, None
    page = items[:max_results]
    return page, _encode_token(_page_key(page[-1]))


# --- RunInstances ----------------------------------------------------------------------------------------
@action("RunInstances")
async def run_instances(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    engine = compute(ctx)
    tag_list = tags.tag_specifications(params, "instance")
    key_name = params.get("KeyName") or ""
    key_material, resolved = await launch_access(ctx, params)
    user_data = params.get("UserData") or ""
    if isinstance(user_data, bytes):
        user_data = base64.b64encode(user_data).decode()
    request = RunRequest(
        image_id=params["ImageId"],
        min_count=params["MinCount"],
        max_count=params["MaxCount"],
        key_name=key_name,
        key_material=key_material,
        groups=[g["name"] for g in resolved],
        group_ids=[g["group_id"] for g in resolved],
        user_data=user_data,
        instance_type=params.get("InstanceType") or "",
        zone=(params.get("Placement") or {}).get("AvailabilityZone") or "",
        kernel_id=params.get("KernelId") or "",
        ramdisk_id=params.get("RamdiskId") or "",
        client_token=params.get("ClientToken") or "",
        disable_api_termination=bool(params.get("DisableApiTermination")),
        shutdown_behavior=params.get("InstanceInitiatedShutdownBehavior") or "terminate",
        block_devices=parse_mappings(params.get("BlockDeviceMappings")),
    )
    capacity = params.get("CapacityReservationSpecification") or {}
    request.capacity_reservation_id = (capacity.get("CapacityReservationTarget") or {}).get(
        "CapacityReservationId"
    ) or ""
    request.capacity_preference = capacity.get("CapacityReservationPreference") or ""
    market = spot.market_options(params)
    if market is not None:  # a one-time spot request fulfilled now or refused (leases/spot.py)
        owner = Owner(ctx.owner_id, ctx.principal.user_id)
        reservation = await ctx.clc.leases.spot.run_now(owner, request, *market)
    else:
        reservation = await engine.launcher.run_instances(ctx.principal, request)
    instances = [engine.store.instances[i] for i in reservation.instance_ids if i in engine.store.instances]
    launched = [i for i in instances if i.state != "terminated" or not i.state_reason.startswith("Server.")]
    if tag_list:
        await tags.tag_created(ctx, "instance", [i.instance_id for i in launched], tag_list)
    tag_sets = await ctx.compute.tags.tags_for([i.instance_id for i in launched]) if tag_list else {}
    # Serialized as DescribeInstances serializes them, into its cache: the next listing reuses this work. A
    # chunk at a time with requests served in between: a thousand at once held the event loop for tens of ms, and
    # a DescribeInstances arriving then waited for it. Each instance is shown as it was when its chunk was made.
    fragments: list[xml.Prebuilt] = []
    for start in range(0, len(launched), Prerender.CHUNK):
        if start:
            await asyncio.sleep(0)
        chunk = launched[start : start + Prerender.CHUNK]
        fragments.extend(fragment for _, fragment in _fragments(engine, chunk, tag_sets))
    return reservation_dict(reservation, fragments)


# --- DescribeInstances -----------------------------------------------------------------------------------
# One answer is one snapshot: every await (the tag reads) happens before the synchronous pass that filters,
# pages and renders the instances, so no report can change a state between the filter and the rendering.
def _visible(ctx: Context, ids: list[str]) -> list[Instance]:
    engine = compute(ctx)
    if ids:
        return engine.instances(ids, ctx.principal)
    return [i for i in engine.store.instances.values() if engine.visible(i, ctx.principal)]


async def _tagged(ctx: Context, ids: list[str], filters: Filters) -> set[str] | None:
    """Ids of the candidates' owners' resources matching the tag filters; None without tag filters."""
    if not filters.tags:
        return None
    tagged: set[str] = set()
    for owner in {i.owner_id for i in _visible(ctx, ids)}:
        tagged |= await ctx.compute.tags.ids_matching(owner, filters.tags) or set()
    return tagged


def _select(ctx: Context, ids: list[str], filters: Filters, tagged: set[str] | None) -> list[Instance]:
    """The instances matching the filters now (no await: one consistent read of the store)."""
    engine = compute(ctx)
    candidates = _visible(ctx, ids)
    if tagged is not None:
        candidates = [i for i in candidates if i.instance_id in tagged]
    if filters.by_name:
        reservations = engine.store.reservations
        for name in filters.by_name:  # one filter at a time: each pass is over fewer instances
            value = FILTER_VALUES.get(name)
            if value is not None:
                test = filters.matcher(name)
                candidates = [i for i in candidates if test(value(i, reservations.get(i.reservation_id)))]
        on_lease = [(name, LEASE_FILTER_VALUES[name]) for name in filters.by_name if name in LEASE_FILTER_VALUES]
        if on_lease:
            lease_of = leases_of(engine)
            candidates = [
                i
                for i in candidates
                if all(filters.match(name, value(lease_of.get(i.instance_id, ""))) for name, value in on_lease)
            ]
    return candidates


@action("DescribeInstances")
async def describe_instances(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    engine = compute(ctx)
    if params.get("MaxResults") is not None and params.get("InstanceIds"):
        raise Ec2Error("InvalidParameterCombination", "The parameter instancesSet cannot be used with maxResults")
    ids = _ids(params)
    filters = Filters.parse(params.get("Filters"), INSTANCE_FILTERS, tags=True)
    tagged = await _tagged(ctx, ids, filters)
    # Select, read the page's tags, select again: the last selection and the rendering below share one
    # synchronous stretch. Each round reads only the tags of instances not read before, so it ends; instances
    # the tag index knows to have none need no read, and without a read there is no second round.
    tag_sets: dict[str, list[dict[str, str]]] = {}
    read: set[str] = set()
    while True:
        page, next_token = _page(_select(ctx, ids, filters, tagged), params)
        unread = [i.instance_id for i in page if i.instance_id not in read]
        read.update(unread)
        unread = ctx.compute.tags.maybe_tagged(unread)
        if not unread:
            break
        tag_sets.update(await ctx.compute.tags.tags_for(unread))
    reservations: dict[str, tuple[Reservation, list[Any]]] = {}
    for reservation, fragment in _fragments(engine, page, tag_sets):
        entry = reservations.get(reservation.reservation_id)
        if entry is None:
            entry = reservations[reservation.reservation_id] = (reservation, [])
        entry[1].append(fragment)
    for cache in (_XML_CACHE, _PAGE_KEYS):
        if len(cache) > 2 * len(engine.store.instances) + 1000:
            for instance_id in [i for i in cache if i not in engine.store.instances]:
                del cache[instance_id]
    return {
        "Reservations": [reservation_dict(r, items) for r, items in reservations.values()],
        "NextToken": next_token,
    }


# The serialized XML of each instance, reused while nothing it shows has changed: serializing ten thousand
# instances from the model on every DescribeInstances would take most of a second.
_XML_CACHE: dict[str, tuple[tuple[Any, ...], xml.Prebuilt]] = {}


def _instance_shape() -> Shape:
    operation = model.operation("DescribeInstances")
    if operation is None:  # botocore's EC2 model has it
        raise RuntimeError("DescribeInstances is missing from botocore's EC2 model")
    shape = operation.output_shape.members["Reservations"].member
    return shape.members["Instances"].member


def _cached_xml(
    instance: Instance,
    reservation: Reservation,
    tag_list: list[dict[str, str]] | None,
    codes: list[str] | None = None,
    lease: str = "",
    volumes: list[Volume] | None = None,
) -> xml.Prebuilt:
    key = (
        instance.state,
        instance.updated_at,
        instance.state_reason,
        instance.private_ip,
        instance.public_ip,
        instance.node_id,
        id(reservation),
        len(reservation.groups),
        tuple((t["Key"], t["Value"]) for t in tag_list) if tag_list else (),
        tuple(codes) if codes else (),
        lease,
        tuple((v.volume_id, v.device, v.attach_state, v.delete_on_termination) for v in volumes) if volumes else (),
    )
    cached = _XML_CACHE.get(instance.instance_id)
    if cached is not None and cached[0] == key:
        return cached[1]
    fragment = xml.members_xml(
        _instance_shape(), instance_dict(instance, reservation, tag_list, codes, volumes) | lease_fields(lease)
    )
    _XML_CACHE[instance.instance_id] = (key, fragment)
    return fragment


def _fragments(
    engine: Compute, instances: list[Instance], tag_sets: dict[str, list[dict[str, str]]]
) -> Iterator[tuple[Reservation, xml.Prebuilt]]:
    """Each instance's XML (from the cache while nothing it shows has changed), with its reservation; instances
    whose reservation is gone are left out."""
    lease_of = leases_of(engine)
    reservations = engine.store.reservations
    codes_of: dict[str, list[str]] = {}  # by image: the same few images for thousands of instances
    # Most instances have no volumes attached (instance-store): only the others are asked for theirs.
    with_volumes = engine.roots.with_volumes() if engine.roots is not None else ()
    for instance in instances:
        reservation = reservations.get(instance.reservation_id)
        if reservation is None:
            continue
        codes = codes_of.get(instance.image_id)
        if codes is None:
            codes = codes_of[instance.image_id] = product_codes(engine, instance)
        instance_id = instance.instance_id
        lease = lease_of.get(instance_id, "")
        volumes = volumes_of(engine, instance) if instance_id in with_volumes else None
        yield reservation, _cached_xml(instance, reservation, tag_sets.get(instance_id), codes, lease, volumes)


async def _serialize(engine: Compute, instances: list[Instance]) -> None:
    """Fill the cache for these instances (a DescribeInstances then only joins their fragments)."""
    tag_sets = await engine.tags.tags_for([i.instance_id for i in instances])
    for _ in _fragments(engine, instances, tag_sets):
        pass


async def warm_cache(engine: Compute, chunk: int = 500) -> int:
    """Serialize every instance once in the background after a start, so the first DescribeInstances of a big
    cloud is as fast as the next ones. Yields to the event loop between chunks."""
    instances = list(engine.store.instances.values())
    for start in range(0, len(instances), chunk):
        await _serialize(engine, instances[start : start + chunk])
        await asyncio.sleep(0)
    return len(instances)


class Prerender:
    """Serializes instances in the background as they are launched or change (an `on_change` listener of the
    engine), a chunk at a time with the event loop free in between. While a big launch's reports arrive, a
    DescribeInstances then finds the XML ready rather than serializing thousands of instances itself."""

    CHUNK = 200  # about 5 ms of serializing: what a request may wait for

    def __init__(self, engine: Compute):
        self.engine = engine
        self.waiting: dict[str, None] = {}  # instance ids, in order
        self.wake = asyncio.Event()

    def __call__(self, instances: list[Instance]) -> None:
        self.waiting.update(dict.fromkeys(i.instance_id for i in instances))
        self.wake.set()

    def now(self, instances: list[Instance]) -> None:
        """Serialize at once the instances a report has just changed (an `on_applied` listener): a report's
        changes are applied a chunk at a time with requests served in between, and a DescribeInstances then
        found hundreds of them changed and not yet serialized (half its time during a big launch). Those that
        may have tags, whose reading waits, are left to the background pass."""
        tagged = set(self.engine.tags.maybe_tagged([i.instance_id for i in instances]))
        for _ in _fragments(self.engine, [i for i in instances if i.instance_id not in tagged], {}):
            pass

    async def run(self) -> None:
        store = self.engine.store
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.waiting:
                chunk = list(itertools.islice(self.waiting, self.CHUNK))
                for instance_id in chunk:
                    del self.waiting[instance_id]
                await _serialize(self.engine, [store.instances[i] for i in chunk if i in store.instances])
                await asyncio.sleep(0)


def install_prerender(engine: Compute) -> Prerender:
    prerender = Prerender(engine)
    engine.on_change.append(prerender)
    engine.on_applied.append(prerender.now)
    engine.background(prerender.run())

    async def forget(instance_ids: list[str]) -> None:  # buried instances: their XML goes too
        for instance_id in instance_ids:
            _XML_CACHE.pop(instance_id, None)

    engine.on_forget.append(forget)
    return prerender


# --- Terminate, reboot, console --------------------------------------------------------------------------
@action("TerminateInstances")
async def terminate_instances(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    ids = _ids(params)
    if not ids:
        raise Ec2Error("MissingParameter", "The request must contain the parameter InstanceId")
    changes = await compute(ctx).terminate(ctx.principal, ids)
    return {
        "TerminatingInstances": [
            {
                "InstanceId": instance.instance_id,
                "CurrentState": state(instance),
                "PreviousState": {"Code": STATE_CODES[previous], "Name": previous},
            }
            for instance, previous in changes
        ]
    }


@action("RebootInstances")
async def reboot_instances(ctx: Context, params: dict[str, Any]) -> None:
    ids = _ids(params)
    if not ids:
        raise Ec2Error("MissingParameter", "The request must contain the parameter InstanceId")
    await compute(ctx).reboot(ctx.principal, ids)
    return None


@action("GetConsoleOutput")
async def get_console_output(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    instance, output = await compute(ctx).console_output(ctx.principal, params["InstanceId"])
    # Always an <output> element, empty before the guest writes: ec2-get-console-output decodes it unconditionally.
    return {"InstanceId": instance.instance_id, "Timestamp": time.time(), "Output": output or ""}


# --- attributes and status -------------------------------------------------------------------------------
@action("DescribeInstanceAttribute")
async def describe_instance_attribute(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    engine = compute(ctx)
    instance = engine.instance(params["InstanceId"], ctx.principal)
    attribute = params["Attribute"]
    result: dict[str, Any] = {"InstanceId": instance.instance_id}
    if attribute == "instanceType":
        result["InstanceType"] = {"Value": instance.vm_type}
    elif attribute == "kernel":
        result["KernelId"] = {"Value": instance.kernel_id or None}
    elif attribute == "ramdisk":
        result["RamdiskId"] = {"Value": instance.ramdisk_id or None}
    elif attribute == "userData":
        result["UserData"] = {"Value": instance.user_data or None}
    elif attribute == "groupSet":
        result["Groups"] = _groups(engine.store.reservations.get(instance.reservation_id))
    elif attribute == "rootDeviceName":
        result["RootDeviceName"] = {"Value": instance.root_device_name}
    elif attribute == "disableApiTermination":
        result["DisableApiTermination"] = {"Value": bool(instance.disable_api_termination)}
    elif attribute == "instanceInitiatedShutdownBehavior":
        result["InstanceInitiatedShutdownBehavior"] = {"Value": instance.shutdown_behavior}
    elif attribute == "blockDeviceMapping":
        result["BlockDeviceMappings"] = block_device_list(volumes_of(engine, instance))
    elif attribute == "productCodes":
        result["ProductCodes"] = product_code_list(product_codes(engine, instance))
    else:
        raise invalid("Attribute", attribute, "This attribute is not supported for instance-store instances.")
    return result


STATUS_FILTERS = {
    "availability-zone",
    "instance-state-name",
    "instance-state-code",
    "instance-status.status",
    "instance-status.reachability",
    "system-status.status",
    "system-status.reachability",
}


def _status(instance: Instance) -> dict[str, Any]:
    if instance.state == "running":
        status, detail = "ok", "passed"
    elif instance.state == "pending":
        status, detail = "initializing", "initializing"
    else:
        status, detail = "not-applicable", None
    block: dict[str, Any] = {"Status": status}
    if detail:
        block["Details"] = [{"Name": "reachability", "Status": detail}]
    return {
        "InstanceId": instance.instance_id,
        "AvailabilityZone": instance.zone,
        "InstanceState": state(instance),
        "InstanceStatus": block,
        "SystemStatus": block,
    }


@action("DescribeInstanceStatus")
async def describe_instance_status(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    engine = compute(ctx)
    ids = _ids(params)
    filters = Filters.parse(params.get("Filters"), STATUS_FILTERS, tags=False)
    candidates = (
        engine.instances(ids, ctx.principal)
        if ids
        else [i for i in engine.store.instances.values() if engine.visible(i, ctx.principal)]
    )
    if not params.get("IncludeAllInstances"):
        candidates = [i for i in candidates if i.state == "running"]
    statuses = []
    for instance in candidates:
        status = _status(instance)
        values = {
            "availability-zone": instance.zone,
            "instance-state-name": instance.state,
            "instance-state-code": str(STATE_CODES[instance.state]),
            "instance-status.status": status["InstanceStatus"]["Status"],
            "system-status.status": status["SystemStatus"]["Status"],
            "instance-status.reachability": (status["InstanceStatus"].get("Details") or [{}])[0].get("Status", ""),
            "system-status.reachability": (status["SystemStatus"].get("Details") or [{}])[0].get("Status", ""),
        }
        if filters.match_all(values):
            statuses.append(instance)
    page, next_token = _page(statuses, params)
    return {"InstanceStatuses": [_status(i) for i in page], "NextToken": next_token}
