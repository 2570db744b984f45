"""Advance reservations as EC2 Capacity Reservations, through boto3 against real CLC, CC, NC (libvirt's test
driver, 4 cores: four m1.small) and Walrus processes: a window that fits is accepted and one that does not is
refused; on-demand launches are refused capacity promised to a coming reservation; launches into a reservation
at its start; the records survive a kill -9 of the CLC."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.clc.compute_cloud import registered_image, run_when_room, wait_state
from tests.clc.ec2_helpers import client, stop_clean
from tests.waiting import wait_for

CLC = {"KOALA_LEASE_TICK_SECONDS": 0.2, "KOALA_SPOT_NOTICE_SECONDS": 2}
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
    return registered_image(cloud, alice, tmp_path_factory.mktemp("bundle"), "machine", "img.leases", "machine-leases")


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
    # DescribeInstances names the reservation an instance runs in, and filters on it.
    shown = instances_by_id(ec2.describe_instances(InstanceIds=[*inside_ids, od[0]["InstanceId"]]))
    assert {shown[i].get("CapacityReservationId") for i in inside_ids} == {a["CapacityReservationId"]}
    assert "CapacityReservationId" not in shown[od[0]["InstanceId"]]
    in_a = ec2.describe_instances(Filters=[{"Name": "capacity-reservation-id", "Values": [a["CapacityReservationId"]]}])
    assert set(instances_by_id(in_a)) == set(inside_ids)
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


def instances_by_id(answer: dict) -> dict[str, dict]:
    return {i["InstanceId"]: i for r in answer["Reservations"] for i in r["Instances"]}


def spot_requests(ec2, ids: list[str]) -> dict[str, dict]:
    found = ec2.describe_spot_instance_requests(SpotInstanceRequestIds=ids)["SpotInstanceRequests"]
    return {r["SpotInstanceRequestId"]: r for r in found}


def wait_requests(ec2, ids: list[str], check, what: str, timeout: float = 30.0) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = spot_requests(ec2, ids)
        if check(found):
            return found
        assert time.monotonic() < deadline, (
            f"{what}: {[(k, v['State'], v['Status']['Code']) for k, v in found.items()]}"
        )
        time.sleep(0.1)


def test_spot_requests_queue_fulfil_and_preempt(cloud, alice, image):
    """Five one-time requests on a four-slot node: four fulfilled, one queued; a terminate lets the fifth in; a
    reservation starting soon gives two of them notice and terminates them at its start (the most recent first);
    the reservation's launches take the room."""
    ec2 = client(cloud, alice)
    spec = {"ImageId": image, "InstanceType": "m1.small"}
    made = ec2.request_spot_instances(InstanceCount=5, LaunchSpecification=spec)["SpotInstanceRequests"]
    rids = [r["SpotInstanceRequestId"] for r in made]
    assert all(r["State"] == "open" and r["SpotPrice"] == "0.000000" for r in made)
    found = wait_requests(ec2, rids, lambda f: sum(r["State"] == "active" for r in f.values()) == 4, "four fulfilled")
    waiting = [r for r in rids if found[r]["State"] == "open"]
    assert waiting == rids[4:]  # FIFO: the last one waits
    running = {r: found[r]["InstanceId"] for r in rids[:4]}
    wait_state(ec2, list(running.values()), {"running"})
    # DescribeInstances shows them as spot instances of their requests, and filters on it.
    shown = instances_by_id(ec2.describe_instances(InstanceIds=list(running.values())))
    assert all(shown[i]["InstanceLifecycle"] == "spot" for i in running.values())
    assert {shown[i]["SpotInstanceRequestId"]: i for i in running.values()} == running
    spot_only = ec2.describe_instances(Filters=[{"Name": "instance-lifecycle", "Values": ["spot"]}])
    assert set(running.values()) <= set(instances_by_id(spot_only))
    by_request = ec2.describe_instances(Filters=[{"Name": "spot-instance-request-id", "Values": [rids[1]]}])
    assert set(instances_by_id(by_request)) == {running[rids[1]]}
    # An on-demand launch finds no room (spot leases are only preempted for reservations and on-demand launches
    # that fit without them: here the node is full of spot instances, so one is preempted for it).
    od = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    found = wait_requests(
        ec2, rids[:4], lambda f: any(r["State"] == "closed" for r in f.values()), "one preempted for on-demand"
    )
    preempted = [r for r in rids[:4] if found[r]["State"] == "closed"]
    assert preempted == [rids[3]] and found[rids[3]]["Status"]["Code"] == "instance-terminated-no-capacity"
    wait_state(ec2, [od], {"running"})
    # A user's terminate frees a slot: the queued request is fulfilled.
    ec2.terminate_instances(InstanceIds=[running[rids[0]], od])
    found = wait_requests(
        ec2,
        rids,
        lambda f: f[rids[4]]["State"] == "active" and f[rids[0]]["State"] == "closed",  # either may show first
        "the fifth fulfilled",
    )
    assert found[rids[0]]["State"] == "closed" and found[rids[0]]["Status"]["Code"] == "instance-terminated-by-user"
    # Three spot instances run. A reservation for two, starting in 6 s: accepted although spot instances fill
    # three of the four slots; one must go: the most recently started (the fifth), given notice 2 s before the
    # start (still running meanwhile), terminated just before it (so that its room is free at the start).
    cr = reserve(ec2, 2, soon(6), soon(600))
    noticed = wait_requests(
        ec2, [rids[4]], lambda f: f[rids[4]]["Status"]["Code"] == "marked-for-termination", "notice given"
    )
    assert noticed[rids[4]]["State"] == "active"
    assert describe(ec2, cr["CapacityReservationId"])["State"] == "scheduled"
    assert wait_state(ec2, [noticed[rids[4]]["InstanceId"]], {"running"})
    found = wait_requests(ec2, [rids[4]], lambda f: f[rids[4]]["State"] == "closed", "terminated before the start")
    wait_state(ec2, [noticed[rids[4]]["InstanceId"]], {"terminated"})
    assert found[rids[4]]["Status"]["Code"] == "instance-terminated-no-capacity"
    assert "starts" in found[rids[4]]["Status"]["Message"]
    wait_cr_state(ec2, cr["CapacityReservationId"], "active")
    target = {"CapacityReservationTarget": {"CapacityReservationId": cr["CapacityReservationId"]}}
    # (the CC learns of the freed capacity from its node a moment after the instance is gone)
    inside = run_when_room(ec2, ImageId=image, MinCount=2, MaxCount=2, CapacityReservationSpecification=target)
    inside_ids = [i["InstanceId"] for i in inside["Instances"]]
    wait_state(ec2, inside_ids, {"running"})
    # Cancel: the surviving spot instances keep running, their requests say so.
    now = spot_requests(ec2, rids)
    survivors = [r for r in rids if now[r]["State"] == "active"]
    assert survivors == rids[1:3], "\n".join(f"{r} {now[r]['State']} {now[r]['Status']}" for r in rids)
    cancelled = ec2.cancel_spot_instance_requests(SpotInstanceRequestIds=survivors)["CancelledSpotInstanceRequests"]
    assert {c["State"] for c in cancelled} == {"cancelled"}
    after = spot_requests(ec2, survivors)
    assert {r["Status"]["Code"] for r in after.values()} == {"request-canceled-and-instance-running"}
    everything = inside_ids + [after[r]["InstanceId"] for r in survivors]
    ec2.terminate_instances(InstanceIds=everything)
    wait_state(ec2, everything, {"terminated"})
    ec2.cancel_capacity_reservation(CapacityReservationId=cr["CapacityReservationId"])
    with pytest.raises(ClientError) as err:
        ec2.request_spot_instances(InstanceCount=1, LaunchSpecification=spec, InstanceInterruptionBehavior="stop")
    assert code(err) == "InvalidParameterCombination"
    with pytest.raises(ClientError) as err:
        ec2.describe_spot_instance_requests(SpotInstanceRequestIds=["sir-zz"])
    assert code(err) == "InvalidSpotInstanceRequestID.Malformed"


def test_stopping_spot_instances_are_stopped_and_started(cloud, alice):
    """A spot instance of an EBS-backed image whose interruption behaviour is stop is stopped (its volumes stay,
    EC2 shows it stopped and its request disabled, the metadata notice says stop) to make room for a reservation,
    and started again (on any node) when the room returns."""
    ec2 = client(cloud, alice)
    volume = ec2.create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
    snapshot = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    wait_for(lambda: ec2.describe_snapshots(SnapshotIds=[snapshot])["Snapshots"][0]["State"] == "completed", 60,
             what="the snapshot")  # fmt: skip
    ec2.delete_volume(VolumeId=volume)
    mapping = [{"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": snapshot}}]
    ebs_image = ec2.register_image(Name="spot-ebs", BlockDeviceMappings=mapping)["ImageId"]
    spec = {"ImageId": ebs_image, "InstanceType": "m1.small"}
    made = ec2.request_spot_instances(InstanceCount=4, LaunchSpecification=spec, InstanceInterruptionBehavior="stop")[
        "SpotInstanceRequests"
    ]
    rids = [r["SpotInstanceRequestId"] for r in made]
    assert {r["InstanceInterruptionBehavior"] for r in made} == {"stop"}
    found = wait_requests(ec2, rids, lambda f: all(r["State"] == "active" for r in f.values()), "all fulfilled")
    instances = {r: found[r]["InstanceId"] for r in rids}
    wait_state(ec2, list(instances.values()), {"running"})
    cr = reserve(ec2, 1, soon(8), soon(600))
    found = wait_requests(
        ec2, rids, lambda f: any(r["State"] == "disabled" for r in f.values()), "one stopped", timeout=60
    )
    stopped = [r for r in rids if found[r]["State"] == "disabled"]
    assert len(stopped) == 1 and found[stopped[0]]["Status"]["Code"] == "instance-stopped-no-capacity"
    victim = instances[stopped[0]]
    assert wait_state(ec2, [victim], {"stopped"})
    volumes = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [victim]}])["Volumes"]
    assert [v["State"] for v in volumes] == ["in-use"]  # its root stays with it
    ec2.cancel_capacity_reservation(CapacityReservationId=cr["CapacityReservationId"])
    found = wait_requests(ec2, stopped, lambda f: f[stopped[0]]["State"] == "active", "started", timeout=60)
    assert found[stopped[0]]["InstanceId"] == victim
    wait_state(ec2, [victim], {"running"})
    everything = list(instances.values())
    ec2.cancel_spot_instance_requests(SpotInstanceRequestIds=rids)
    ec2.terminate_instances(InstanceIds=everything)
    wait_state(ec2, everything, {"terminated"})
    wait_for(lambda: not ec2.describe_volumes()["Volumes"], 60, what="the roots gone with them")
    ec2.deregister_image(ImageId=ebs_image)
    ec2.delete_snapshot(SnapshotId=snapshot)


def test_hibernating_spot_instances_are_suspended_and_resumed(cloud, alice, image):
    """A spot instance whose interruption behaviour is hibernate is suspended (libvirt save on its node; EC2 shows
    it stopped, its request disabled) to make room for a reservation, and resumed when the room returns; the admin
    suspends and resumes one with `koala admin suspend|resume`."""
    ec2 = client(cloud, alice)
    spec = {"ImageId": image, "InstanceType": "m1.small"}
    made = ec2.request_spot_instances(
        InstanceCount=4, LaunchSpecification=spec, InstanceInterruptionBehavior="hibernate"
    )["SpotInstanceRequests"]
    rids = [r["SpotInstanceRequestId"] for r in made]
    found = wait_requests(ec2, rids, lambda f: all(r["State"] == "active" for r in f.values()), "all fulfilled")
    instances = {r: found[r]["InstanceId"] for r in rids}
    wait_state(ec2, list(instances.values()), {"running"})
    cr = reserve(ec2, 1, soon(8), soon(600))
    found = wait_requests(
        ec2, rids, lambda f: any(r["State"] == "disabled" for r in f.values()), "one suspended", timeout=60
    )
    suspended = [r for r in rids if found[r]["State"] == "disabled"]
    assert suspended == [rids[3]]  # the most recently fulfilled
    assert found[rids[3]]["Status"]["Code"] == "instance-stopped-no-capacity"
    assert wait_state(ec2, [instances[rids[3]]], {"stopped"})
    # The room returns (the reservation is cancelled): the lease is resumed where it was.
    ec2.cancel_capacity_reservation(CapacityReservationId=cr["CapacityReservationId"])
    found = wait_requests(ec2, [rids[3]], lambda f: f[rids[3]]["State"] == "active", "resumed", timeout=60)
    assert found[rids[3]]["InstanceId"] == instances[rids[3]]
    wait_state(ec2, [instances[rids[3]]], {"running"})
    # The admin's suspend and resume of an instance.
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    admin = [sys.executable, "-m", "cli", "admin", "--state-dir", str(cloud.dir)]
    done = subprocess.run([*admin, "suspend", instances[rids[0]]], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and '"state": "stopped"' in done.stdout, done.stdout + done.stderr
    assert wait_state(ec2, [instances[rids[0]]], {"stopped"})
    again = subprocess.run([*admin, "suspend", instances[rids[0]]], capture_output=True, text=True, env=env)
    assert again.returncode == 1 and "IncorrectInstanceState" in again.stderr
    done = subprocess.run([*admin, "resume", instances[rids[0]]], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and '"state": "running"' in done.stdout, done.stdout + done.stderr
    # Preemptions are on record with their reasons (the admin page shows them).
    everything = list(instances.values())
    ec2.terminate_instances(InstanceIds=everything)
    wait_state(ec2, everything, {"terminated"})
