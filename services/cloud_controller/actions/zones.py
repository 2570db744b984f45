"""DescribeAvailabilityZones (with Eucalyptus's `verbose` capacity table) and DescribeInstanceTypes."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

from services.cloud_controller.actions import Context, action
from services.cloud_controller.ec2 import paging
from services.cloud_controller.ec2.errors import Ec2Error
from services.cloud_controller.ec2.filters import Filters

ZONE_FILTERS = {"zone-name", "state", "region-name", "zone-type"}
TYPE_FILTERS = {
    "instance-type",
    "vcpu-info.default-vcpus",
    "memory-info.size-in-mib",
    "instance-storage-info.total-size-in-gb",
    "hypervisor",
}


def _zone(name: str, state: str, region: str) -> dict[str, Any]:
    return {"ZoneName": name, "State": state, "RegionName": region, "ZoneType": "availability-zone", "Messages": []}


@action("DescribeAvailabilityZones")
async def describe_availability_zones(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    engine = ctx.clc.compute
    region = ctx.clc.config.KOALA_REGION
    names = list(params.get("ZoneNames") or [])
    verbose = "verbose" in names
    names = [n for n in names if n != "verbose"]
    zones = sorted(engine.cc.clusters)
    for name in names:
        if name not in zones:
            raise Ec2Error("InvalidParameterValue", f"Invalid availability zone: [{name[:64]}]")
    filters = Filters.parse(params.get("Filters"), ZONE_FILTERS, tags=False)
    if verbose and engine.admission.stale(engine.settings.fresh_report):
        await engine.capacity.refresh_capacity()  # the capacity table is worth a fresh report
    ebs = ctx.clc.ebs
    if verbose:
        await asyncio.gather(*(ebs.refresh(zone) for zone in names or zones))
    result = []
    for zone in names or zones:
        capacity = engine.admission.zones.get(zone)
        state = "available" if capacity is not None and capacity.reachable else "unavailable"
        if not filters.match_all(
            {"zone-name": zone, "state": state, "region-name": region, "zone-type": "availability-zone"}
        ):
            continue
        if not verbose:
            result.append(_zone(zone, state, region))
            continue
        host = urlsplit(engine.cc.clusters.get(zone, "")).hostname or ""
        result.append(_zone(zone, f"{state} {host}".strip(), region))
        result.append(_zone("|- vm types", "free / max   cpu   ram  disk", region))
        for vm in engine.vmtypes.list():
            free, most = engine.admission.free(zone, vm), engine.admission.maximum(zone, vm)
            row = f"{free:04d} / {most:04d}   {vm.cores:<4d} {vm.memory_mb:>5d} {vm.disk_gb:>5d}"
            result.append(_zone(f"|- {vm.name}", row, region))
        storage = ebs.zone_capacity(zone)  # the zone's block storage: GiB free / capacity for volumes
        free = max(storage.capacity_gb - ebs.zone_allocated(zone), 0)
        result.append(_zone("|- volumes", f"{free:04d} / {storage.capacity_gb:04d} GiB", region))
    return {"AvailabilityZones": result}


@action("DescribeInstanceTypes")
async def describe_instance_types(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    engine = ctx.clc.compute
    wanted = list(params.get("InstanceTypes") or [])
    known = {vm.name: vm for vm in engine.vmtypes.list()}
    for name in wanted:
        if name not in known:
            raise Ec2Error("InvalidInstanceType", f"The instance type '{name[:64]}' does not exist")
    filters = Filters.parse(params.get("Filters"), TYPE_FILTERS, tags=False)
    result: list[dict[str, Any]] = []
    for vm in engine.vmtypes.list():
        if wanted and vm.name not in wanted:
            continue
        values = {
            "instance-type": vm.name,
            "vcpu-info.default-vcpus": str(vm.cores),
            "memory-info.size-in-mib": str(vm.memory_mb),
            "instance-storage-info.total-size-in-gb": str(vm.disk_gb),
            "hypervisor": "xen",
        }
        if not filters.match_all(values):
            continue
        result.append(
            {
                "InstanceType": vm.name,
                "CurrentGeneration": False,
                "SupportedRootDeviceTypes": ["instance-store", "ebs"],
                "SupportedVirtualizationTypes": ["paravirtual"],
                "Hypervisor": "xen",
                "VCpuInfo": {"DefaultVCpus": vm.cores, "DefaultCores": vm.cores, "DefaultThreadsPerCore": 1},
                "MemoryInfo": {"SizeInMiB": vm.memory_mb},
                "InstanceStorageSupported": True,
                "InstanceStorageInfo": {"TotalSizeInGB": vm.disk_gb},
            }
        )
    order = {vm.name: f"{n:06d}" for n, vm in enumerate(engine.vmtypes.list())}  # pages keep the listing's order
    result, next_token = paging.cut(result, lambda t: order[t["InstanceType"]], params, 5, 100)
    return {"InstanceTypes": result, "NextToken": next_token}
