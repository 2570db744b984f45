"""Capacity Reservations: Koala's advance reservations (Haizea's AR leases) in EC2's own shapes.
CreateCapacityReservation (StartDate in the future: a reservation that holds capacity for a coming window),
DescribeCapacityReservations, ModifyCapacityReservation, CancelCapacityReservation. The decisions are the lease
scheduler's (`leases/scheduler.py`); this module parses and shapes answers as botocore's model has them."""

from __future__ import annotations

import datetime as dt
from typing import Any

from services.cloud_controller.actions import Context, action, tags
from services.cloud_controller.ec2.errors import Ec2Error, invalid
from services.cloud_controller.ec2.filters import Filters
from services.cloud_controller.leases.scheduler import LeaseScheduler
from services.cloud_controller.leases.store import CapacityReservation

MAX_IDS = 1000
MAX_RESULTS = 1000
FILTERS = {
    "instance-type",
    "owner-id",
    "availability-zone",
    "instance-platform",
    "tenancy",
    "state",
    "start-date",
    "end-date",
    "end-date-type",
    "instance-match-criteria",
}


def leases(ctx: Context) -> LeaseScheduler:
    return ctx.clc.leases


def _epoch(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.timestamp()
    raise invalid("Date", value, "An ISO 8601 time is expected.")


def reservation_dict(scheduler: LeaseScheduler, cr: CapacityReservation, region: str) -> dict[str, Any]:
    return {
        "CapacityReservationId": cr.reservation_id,
        "OwnerId": cr.owner_id,
        "CapacityReservationArn": f"arn:aws:ec2:{region}:{cr.owner_id}:capacity-reservation/{cr.reservation_id}",
        "AvailabilityZone": cr.zone,
        "InstanceType": cr.instance_type,
        "InstancePlatform": cr.platform,
        "Tenancy": cr.tenancy,
        "TotalInstanceCount": cr.total,
        "AvailableInstanceCount": scheduler.available(cr),
        "EbsOptimized": False,
        "EphemeralStorage": False,
        "State": cr.state,
        "StartDate": cr.start_date,
        "EndDate": cr.end_date,
        "EndDateType": cr.end_date_type,
        "InstanceMatchCriteria": cr.match,
        "CreateDate": cr.create_date,
        "Tags": cr.tags or None,
        "ReservationType": "default",
        "DeliveryPreference": "fixed",
    }


def _region(ctx: Context) -> str:
    return ctx.clc.config.KOALA_REGION


@action("CreateCapacityReservation")
async def create_capacity_reservation(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    zone = params.get("AvailabilityZone") or ""
    if not zone:
        raise Ec2Error("MissingParameter", "The request must contain the parameter AvailabilityZone")
    tag_list = tags.tag_specifications(params, "capacity-reservation")
    scheduler = leases(ctx)
    cr = await scheduler.create(
        ctx.owner_id,
        instance_type=params["InstanceType"],
        zone=zone,
        count=params["InstanceCount"],
        start=_epoch(params.get("StartDate")),
        end=_epoch(params.get("EndDate")),
        end_type=params.get("EndDateType") or "unlimited",
        match=params.get("InstanceMatchCriteria") or "open",
        platform=params["InstancePlatform"],
        tenancy=params.get("Tenancy") or "default",
        client_token=params.get("ClientToken") or "",
        tags=[{"Key": t.get("Key", ""), "Value": t.get("Value", "")} for t in tag_list],
    )
    return {"CapacityReservation": reservation_dict(scheduler, cr, _region(ctx))}


@action("DescribeCapacityReservations")
async def describe_capacity_reservations(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    scheduler = leases(ctx)
    wanted = params.get("CapacityReservationIds") or []
    if len(wanted) > MAX_IDS:
        raise invalid("CapacityReservationIds", len(wanted), f"At most {MAX_IDS} ids per request.")
    filters = Filters.parse(params.get("Filters"), FILTERS, tags=True)
    if wanted:
        found = [scheduler.reservation(ctx.owner_id, i) for i in dict.fromkeys(wanted)]
    else:
        found = [cr for cr in scheduler.store.reservations.values() if cr.owner_id == ctx.owner_id]
    found.sort(key=lambda cr: (cr.create_date, cr.reservation_id))
    selected = [cr for cr in found if _matches(cr, filters)]
    limit = params.get("MaxResults") or MAX_RESULTS
    if not 1 <= limit <= MAX_RESULTS:
        raise invalid("MaxResults", limit, f"Between 1 and {MAX_RESULTS}.")
    start = 0
    if params.get("NextToken"):
        try:
            start = int(params["NextToken"])
        except ValueError:
            raise invalid("NextToken", params["NextToken"]) from None
    page = selected[start : start + limit]
    following = str(start + limit) if start + limit < len(selected) else None
    region = _region(ctx)
    return {
        "CapacityReservations": [reservation_dict(scheduler, cr, region) for cr in page],
        "NextToken": following,
    }


def _matches(cr: CapacityReservation, filters: Filters) -> bool:
    if filters.tags:
        pairs = {t["Key"]: t["Value"] for t in cr.tags}
        for name, values in filters.tags.items():
            if name == "tag-key" and not any(k in values for k in pairs):
                return False
            if name == "tag-value" and not any(v in values for v in pairs.values()):
                return False
            if name.startswith("tag:") and pairs.get(name[4:]) not in values:
                return False
    return filters.match_all(
        {
            "instance-type": cr.instance_type,
            "owner-id": cr.owner_id,
            "availability-zone": cr.zone,
            "instance-platform": cr.platform,
            "tenancy": cr.tenancy,
            "state": cr.state,
            "end-date-type": cr.end_date_type,
            "instance-match-criteria": cr.match,
            "start-date": _stamp(cr.start_date),
            "end-date": _stamp(cr.end_date) if cr.end_date is not None else "",
        }
    )


def _stamp(value: float) -> str:
    return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@action("CancelCapacityReservation")
async def cancel_capacity_reservation(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    await leases(ctx).cancel(ctx.owner_id, params["CapacityReservationId"])
    return {"Return": True}


@action("ModifyCapacityReservation")
async def modify_capacity_reservation(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    if params.get("Accept") is False:
        raise invalid("Accept", False, "Only true is supported.")
    await leases(ctx).modify(
        ctx.owner_id,
        params["CapacityReservationId"],
        count=params.get("InstanceCount"),
        start=_epoch(params.get("StartDate")),
        end=_epoch(params.get("EndDate")),
        end_type=params.get("EndDateType"),
        match=params.get("InstanceMatchCriteria"),
    )
    return {"Return": True}
