"""The leases page against the running cloud: a capacity reservation made through boto3 shows in the zone's slot
table chart (a bar per node it holds) and in the reservations table; the spot queue and preemption tables."""

from __future__ import annotations

import datetime as dt

import boto3
from botocore.config import Config

from tests.admin.conftest import open_page, screenshot


def _ec2(admin_cloud):
    eucarc = (admin_cloud.dir / "data" / "clc" / "admin" / "eucarc").read_text()
    values = dict(
        line.removeprefix("export ").split("=", 1) for line in eucarc.splitlines() if line.startswith("export ")
    )
    return boto3.client(
        "ec2",
        endpoint_url=admin_cloud.url("clc") + "/services/Eucalyptus",
        region_name="eucalyptus",
        aws_access_key_id=values["EC2_ACCESS_KEY"].strip("'\""),
        aws_secret_access_key=values["EC2_SECRET_KEY"].strip("'\""),
        config=Config(retries={"max_attempts": 1}),
    )


def test_leases_page_shows_the_slot_table(admin_cloud, browser_context, admin_password) -> None:
    ec2 = _ec2(admin_cloud)
    start = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    cr = ec2.create_capacity_reservation(
        InstanceType="m1.small",
        InstancePlatform="Linux/UNIX",
        AvailabilityZone="zone1",
        InstanceCount=1,
        StartDate=start,
        EndDate=start + dt.timedelta(hours=3),
        EndDateType="limited",
    )["CapacityReservation"]
    try:
        page = open_page(browser_context, admin_password, "/admin/leases")
        rows = page.inner_text("#reservations")
        assert cr["CapacityReservationId"] in rows and "scheduled" in rows
        bar = page.locator("#slots-zone1 rect.reserved")
        assert bar.count() == 1
        assert cr["CapacityReservationId"] in bar.first.locator("title").text_content()
        # Two hours from now on a chart of the next day: the bar starts about a twelfth of the way across.
        x = float(bar.first.get_attribute("x"))
        assert 120 + (900 - 120) * 1.5 / 24 < x < 120 + (900 - 120) * 2.5 / 24
        assert "empty" in page.inner_text("#queue") and "none" in page.inner_text("#preemptions")
        screenshot(page, "leases")
        page.close()
    finally:
        ec2.cancel_capacity_reservation(CapacityReservationId=cr["CapacityReservationId"])
