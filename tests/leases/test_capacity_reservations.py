"""Advance reservations as EC2 Capacity Reservations, through boto3 against real CLC, CC, NC (libvirt's test
driver, 4 cores: four m1.small) and Walrus processes: a window that fits is accepted and one that does not is
refused; on-demand launches are refused capacity promised to a coming reservation; launches into a reservation
at its start; the records survive a kill -9 of the CLC."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from botocore.exceptions import ClientError

from tests.clc.compute_cloud import bundle_and_upload, wait_state, wait_zone_ready
from tests.clc.ec2_helpers import client, stop_clean

CLC = {"KOALA_LEASE_TICK_SECONDS": 0.2}
NC = {"MAX_CORES": 4}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    from tests.harness import Cloud

    instance = Cloud(tmp_path_factory.mktemp("leases") / "cloud", extra={"clc": CLC, "nc": NC})
    instance.start()
    try:
        yield instance
    finally:
        stop_clean(instance)


@pytest.fixture(scope="module")
def image(cloud, alice, tmp_path_factory):
    location = bundle_and_upload(cloud, tmp_path_factory.mktemp("bundle"), "machine", "img.leases")
    image_id = client(cloud, alice).register_image(ImageLocation=location, Name="machine-leases")["ImageId"]
    wait_zone_ready(cloud, alice)
    return image_id


def code(err: pytest.ExceptionInfo) -> str:
    return err.value.response["Error"]["Code"]


def soon(seconds: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)


def reserve(ec2, count: int, start: dt.datetime | None, end: dt.datetime | None, **extra) -> dict:
    args = {
        "InstanceType": "m1.small",
        "InstancePlatform": "Linux/UNIX",
        "AvailabilityZone": "zone1",
        "InstanceCount": count,
        **extra,
    }
    if start is not None:
        args["StartDate"] = start
    if end is not None:
        args.update(EndDate=end, EndDateType="limited")
    return ec2.create_capacity_reservation(**args)["CapacityReservation"]


def describe(ec2, cr_id: str) -> dict:
    return ec2.describe_capacity_reservations(CapacityReservationIds=[cr_id])["CapacityReservations"][0]


def wait_cr_state(ec2, cr_id: str, state: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        found = describe(ec2, cr_id)
        if found["State"] == state:
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.1)


def test_bad_requests_get_ec2_errors(cloud, alice, image):
    ec2 = client(cloud, alice)
    with pytest.raises(ClientError) as err:
        ec2.create_capacity_reservation(
            InstanceType="m1.small",
            InstancePlatform="Linux/UNIX",
            AvailabilityZone="zone1",
            InstanceCount=1,
            EndDateType="limited",
        )
    assert code(err) == "InvalidParameterValue"
    with pytest.raises(ClientError) as err:
        reserve(ec2, 0, None, None)
    assert code(err) == "InvalidParameterValue"
    with pytest.raises(ClientError) as err:
        reserve(ec2, 1, soon(100), soon(50))  # ends before it starts
    assert code(err) == "InvalidParameterValue"
    with pytest.raises(ClientError) as err:
        reserve(ec2, 1, None, None, Tenancy="dedicated")
    assert code(err) == "InvalidParameterValue"
    with pytest.raises(ClientError) as err:
        reserve(ec2, 1, None, None, InstanceType="m9.huge")
    assert code(err) == "InvalidParameterValue"
    with pytest.raises(ClientError) as err:
        ec2.cancel_capacity_reservation(CapacityReservationId="cr-../../x")
    assert code(err) == "InvalidCapacityReservationId.Malformed"
    with pytest.raises(ClientError) as err:
        ec2.describe_capacity_reservations(CapacityReservationIds=["cr-0000beef"])
    assert code(err) == "InvalidCapacityReservationId.NotFound"


def test_reservations_through_time(cloud, alice, bob, image):
    ec2 = client(cloud, alice)
    # A: two m1.small over a window that starts in 4 s: accepted, scheduled. The node has four.
    a = reserve(ec2, 2, soon(4), soon(3600), InstanceMatchCriteria="targeted")
    assert a["State"] == "scheduled" and a["TotalInstanceCount"] == 2 and a["AvailableInstanceCount"] == 2
    # B: three more over an overlapping window: 2 + 3 > 4: refused. C: two fit beside A: accepted.
    with pytest.raises(ClientError) as err:
        reserve(ec2, 3, soon(1800), soon(7200))
    assert code(err) == "InsufficientInstanceCapacity"
    c = reserve(ec2, 2, soon(1800), soon(5400))
    # After A's window ends the whole node is free again: four from then on are accepted.
    d = reserve(ec2, 4, soon(7200), soon(9000))
    assert d["State"] == "scheduled"
    # On-demand: an instance runs for ever, so with A and C promised from now on, nothing is left.
    with pytest.raises(ClientError) as err:
        ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)
    assert code(err) == "InsufficientInstanceCapacity"
    # D holds the whole node later on: a cancel of C alone still leaves no room for ever; cancelling D too does.
    ec2.cancel_capacity_reservation(CapacityReservationId=c["CapacityReservationId"])
    with pytest.raises(ClientError) as err:
        ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)
    assert code(err) == "InsufficientInstanceCapacity"
    ec2.cancel_capacity_reservation(CapacityReservationId=d["CapacityReservationId"])
    assert describe(ec2, d["CapacityReservationId"])["State"] == "cancelled"
    with pytest.raises(ClientError) as err:
        ec2.cancel_capacity_reservation(CapacityReservationId=d["CapacityReservationId"])
    assert code(err) == "IncorrectState"
    od = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=5)["Instances"]
    assert len(od) == 2  # four cores, two promised to A: two on demand
    # Another account cannot see or use A.
    with pytest.raises(ClientError) as err:
        client(cloud, bob).describe_capacity_reservations(CapacityReservationIds=[a["CapacityReservationId"]])
    assert code(err) == "InvalidCapacityReservationId.NotFound"
    # Before its start a launch into A is refused; at its start it holds two slots for launches that target it.
    target = {"CapacityReservationTarget": {"CapacityReservationId": a["CapacityReservationId"]}}
    if describe(ec2, a["CapacityReservationId"])["State"] == "scheduled":
        with pytest.raises(ClientError) as err:
            ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, CapacityReservationSpecification=target)
        assert code(err) == "IncorrectState"
    wait_cr_state(ec2, a["CapacityReservationId"], "active")
    with pytest.raises(ClientError) as err:  # untargeted launches do not get a targeted reservation's room
        ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)
    assert code(err) == "InsufficientInstanceCapacity"
    inside = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=3, CapacityReservationSpecification=target)
    inside_ids = [i["InstanceId"] for i in inside["Instances"]]
    assert len(inside_ids) == 2
    wait_state(ec2, inside_ids + [i["InstanceId"] for i in od], {"running"})
    assert describe(ec2, a["CapacityReservationId"])["AvailableInstanceCount"] == 0
    with pytest.raises(ClientError) as err:
        ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, CapacityReservationSpecification=target)
    assert code(err) == "ReservationCapacityExceeded"
    # A modification that no longer fits is refused and changes nothing.
    with pytest.raises(ClientError) as err:
        ec2.modify_capacity_reservation(CapacityReservationId=a["CapacityReservationId"], InstanceCount=3)
    assert code(err) == "InsufficientInstanceCapacity"
    assert describe(ec2, a["CapacityReservationId"])["TotalInstanceCount"] == 2
    # A terminated instance gives its slot back to the reservation.
    ec2.terminate_instances(InstanceIds=inside_ids[:1])
    wait_state(ec2, inside_ids[:1], {"terminated"})
    assert describe(ec2, a["CapacityReservationId"])["AvailableInstanceCount"] == 1

    # kill -9 of the CLC: every reservation, its state and its instances are as they were.
    before = {cr["CapacityReservationId"]: cr for cr in ec2.describe_capacity_reservations()["CapacityReservations"]}
    cloud.kill("clc")
    cloud.start("clc")
    after = {
        cr["CapacityReservationId"]: cr
        for cr in client(cloud, alice).describe_capacity_reservations()["CapacityReservations"]
    }
    assert after == before
    ec2 = client(cloud, alice)
    with pytest.raises(ClientError) as err:  # the promise still holds
        ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)
    assert code(err) == "InsufficientInstanceCapacity"
    again = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, CapacityReservationSpecification=target)
    everything = inside_ids[1:] + [i["InstanceId"] for i in od] + [again["Instances"][0]["InstanceId"]]
    ec2.terminate_instances(InstanceIds=everything)
    wait_state(ec2, everything, {"terminated"})
    ec2.cancel_capacity_reservation(CapacityReservationId=a["CapacityReservationId"])


def test_an_open_reservation_takes_untargeted_launches_and_expires(cloud, alice, image):
    ec2 = client(cloud, alice)
    cr = reserve(ec2, 1, None, soon(6))
    assert cr["State"] == "active" and cr["InstanceMatchCriteria"] == "open"
    launched = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    assert describe(ec2, cr["CapacityReservationId"])["AvailableInstanceCount"] == 0
    # At its end the reservation expires and its instance keeps running (EC2's limited EndDateType).
    wait_cr_state(ec2, cr["CapacityReservationId"], "expired")
    assert wait_state(ec2, [launched], {"running"})[launched]["State"]["Name"] == "running"
    ec2.terminate_instances(InstanceIds=[launched])
    wait_state(ec2, [launched], {"terminated"})
