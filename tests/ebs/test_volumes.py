"""EBS volumes against real CLC, Walrus, CC (with its storage) and NC (libvirt test driver) processes, through
boto3 and awscli: create (tags, ClientToken, sizes), describe (filters, paging over 200 volumes), status and
attributes, tags, attach/detach bookkeeping, quotas and the zone's capacity, isolation between accounts, bad input
with EC2's error codes, and kill -9 of the CC and the CLC while volumes are being made and deleted."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from botocore.exceptions import ClientError

from tests.clc.compute_cloud import bundle_and_upload, wait_state, wait_zone_ready
from tests.clc.ec2_helpers import aws, aws_error, client, code, stop_clean
from tests.harness import Cloud

CAPACITY = 1200
QUOTA = 1100


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    instance = Cloud(
        tmp_path_factory.mktemp("ebs") / "cloud",
        extra={
            "clc": {"KOALA_QUOTA_VOLUME_GB": QUOTA, "KOALA_EBS_POLL_SECONDS": 1},
            "cc": {"KOALA_EBS_CAPACITY_GB": CAPACITY},  # the zone's storage, whatever this machine's disk
        },
    )
    try:
        instance.start()
        yield instance
    finally:
        stop_clean(instance)


def volume_files(cloud) -> set[str]:
    directory = cloud.dir / "data" / "cc-zone1" / "volumes"
    return {p.stem for p in directory.glob("*.img")}


def wait_volume(ec2, volume_id: str, state: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        found = ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [volume_id]}])["Volumes"]
        if found and found[0]["State"] == state:
            return found[0]
        if state == "gone" and not found:
            return {}
        if time.monotonic() > deadline:
            raise AssertionError(f"{volume_id} not {state}: {found}")
        time.sleep(0.1)


def test_create_describe_tag_delete(cloud, alice):
    ec2 = client(cloud, alice)
    created = ec2.create_volume(
        AvailabilityZone="zone1",
        Size=3,
        TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": "role", "Value": "db"}]}],
        ClientToken="make-db-1",
    )
    volume_id = created["VolumeId"]
    assert volume_id.startswith("vol-") and created["Size"] == 3 and created["AvailabilityZone"] == "zone1"
    assert created["State"] == "available"  # a sparse file: made before the answer
    assert created["VolumeType"] == "standard" and created["Tags"] == [{"Key": "role", "Value": "db"}]
    assert volume_id in volume_files(cloud)
    again = ec2.create_volume(AvailabilityZone="zone1", Size=3, ClientToken="make-db-1")
    assert again["VolumeId"] == volume_id  # ClientToken: the same volume, not a second one
    other = ec2.create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]

    described = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    assert [v["VolumeId"] for v in described] == [volume_id] and described[0]["Attachments"] == []
    by_tag = ec2.describe_volumes(Filters=[{"Name": "tag:role", "Values": ["db"]}])["Volumes"]
    assert [v["VolumeId"] for v in by_tag] == [volume_id]
    by_size = ec2.describe_volumes(
        Filters=[{"Name": "size", "Values": ["1"]}, {"Name": "status", "Values": ["avail*"]}]
    )
    assert [v["VolumeId"] for v in by_size["Volumes"]] == [other]
    ec2.create_tags(Resources=[other], Tags=[{"Key": "role", "Value": "scratch"}])
    assert (
        ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [other]}])["Tags"][0]["ResourceType"] == "volume"
    )

    status = ec2.describe_volume_status(VolumeIds=[volume_id])["VolumeStatuses"][0]
    assert status["VolumeStatus"]["Status"] == "ok" and status["AvailabilityZone"] == "zone1"
    ok = ec2.describe_volume_status(Filters=[{"Name": "volume-status.status", "Values": ["ok"]}])["VolumeStatuses"]
    assert {volume_id, other} <= {s["VolumeId"] for s in ok}
    attribute = ec2.describe_volume_attribute(VolumeId=volume_id, Attribute="autoEnableIO")
    assert attribute["AutoEnableIO"] == {"Value": False} and attribute["VolumeId"] == volume_id

    # awscli too
    listed = aws(cloud, alice, "describe-volumes", "--volume-ids", other)["Volumes"]
    assert listed[0]["Tags"] == [{"Key": "role", "Value": "scratch"}]
    aws(cloud, alice, "delete-volume", "--volume-id", other)
    ec2.delete_volume(VolumeId=volume_id)
    with pytest.raises(ClientError) as err:
        ec2.describe_volumes(VolumeIds=[volume_id])
    assert code(err) == "InvalidVolume.NotFound"
    assert not {volume_id, other} & volume_files(cloud)
    assert not ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [volume_id, other]}])["Tags"]


def test_paging_and_filters_over_200_volumes(cloud, alice):
    ec2 = client(cloud, alice)
    made = [ec2.create_volume(AvailabilityZone="zone1", Size=1 + i % 2)["VolumeId"] for i in range(200)]
    try:
        seen, token, pages = [], None, 0
        while True:
            kwargs = {"MaxResults": 30, **({"NextToken": token} if token else {})}
            answer = ec2.describe_volumes(**kwargs)
            seen += [v["VolumeId"] for v in answer["Volumes"]]
            pages += 1
            token = answer.get("NextToken")
            if not token:
                break
        assert sorted(seen) == sorted(made) and len(seen) == len(set(seen)) and pages == 7
        twos = ec2.get_paginator("describe_volumes").paginate(
            Filters=[{"Name": "size", "Values": ["2"]}], PaginationConfig={"PageSize": 25}
        )
        assert sum(len(p["Volumes"]) for p in twos) == 100
        # awscli follows NextToken by itself with --page-size
        listed = aws(cloud, alice, "describe-volumes", "--page-size", "40")["Volumes"]
        assert len(listed) == 200
        with pytest.raises(ClientError) as err:
            ec2.describe_volumes(VolumeIds=made[:2], MaxResults=5)
        assert code(err) == "InvalidParameterCombination"
        for bad in (4, 501):
            with pytest.raises(ClientError) as err:
                ec2.describe_volumes(MaxResults=bad)
            assert code(err) == "InvalidParameterValue"
        with pytest.raises(ClientError) as err:
            ec2.describe_volumes(MaxResults=5, NextToken="!!not-a-token!!")
        assert code(err) == "InvalidNextToken"
        statuses = ec2.get_paginator("describe_volume_status").paginate(PaginationConfig={"PageSize": 50})
        assert sum(len(p["VolumeStatuses"]) for p in statuses) == 200
    finally:
        for volume_id in made:
            ec2.delete_volume(VolumeId=volume_id)
    assert not set(made) & volume_files(cloud)


def test_bad_input_quota_and_capacity(cloud, alice, bob):
    ec2 = client(cloud, alice)
    for kwargs, expected in (
        ({"AvailabilityZone": "zone1", "Size": 0}, "InvalidParameterValue"),
        ({"AvailabilityZone": "zone1", "Size": 1025}, "InvalidParameterValue"),
        ({"AvailabilityZone": "nowhere", "Size": 1}, "InvalidParameterValue"),
        ({"AvailabilityZone": "zone1", "Size": 1, "VolumeType": "io1", "Iops": 100}, "InvalidParameterCombination"),
        ({"AvailabilityZone": "zone1", "Size": 1, "VolumeType": "gp2"}, "InvalidParameterValue"),
        ({"AvailabilityZone": "zone1", "Size": 1, "Encrypted": True}, "InvalidParameterValue"),
        ({"AvailabilityZone": "zone1", "SnapshotId": "snap-00000000"}, "InvalidSnapshot.NotFound"),
        ({"AvailabilityZone": "zone1", "SnapshotId": "snap-zz"}, "InvalidSnapshotID.Malformed"),
        ({"AvailabilityZone": "zone1"}, "MissingParameter"),
        ({"AvailabilityZone": "zone1", "Size": 1, "TagSpecifications": [{"ResourceType": "instance", "Tags": []}]},
         "InvalidParameterValue"),
    ):  # fmt: skip
        with pytest.raises(ClientError) as err:
            ec2.create_volume(**kwargs)
        assert code(err) == expected, kwargs
    for call, kwargs, expected in (
        (ec2.delete_volume, {"VolumeId": "vol-00000000"}, "InvalidVolume.NotFound"),
        (ec2.delete_volume, {"VolumeId": "volume-1"}, "InvalidVolumeID.Malformed"),
        (ec2.describe_volumes, {"VolumeIds": ["vol-0000000g"]}, "InvalidVolumeID.Malformed"),
        (ec2.describe_volume_attribute, {"VolumeId": "vol-00000000", "Attribute": "autoEnableIO"},
         "InvalidVolume.NotFound"),
        (ec2.describe_volumes, {"Filters": [{"Name": "colour", "Values": ["red"]}]}, "InvalidParameterValue"),
        (ec2.detach_volume, {"VolumeId": "vol-00000000"}, "InvalidVolume.NotFound"),
    ):  # fmt: skip
        with pytest.raises(ClientError) as err:
            call(**kwargs)
        assert code(err) == expected, kwargs

    # The account's quota (KOALA_QUOTA_VOLUME_GB), then the zone's capacity (the CC's KOALA_EBS_CAPACITY_GB).
    big = ec2.create_volume(AvailabilityZone="zone1", Size=1000)["VolumeId"]
    with pytest.raises(ClientError) as err:
        ec2.create_volume(AvailabilityZone="zone1", Size=101)
    assert code(err) == "VolumeLimitExceeded"
    other = client(cloud, bob)
    filler = other.create_volume(AvailabilityZone="zone1", Size=CAPACITY - 1000)["VolumeId"]
    zones = ec2.describe_availability_zones(ZoneNames=["verbose"])["AvailabilityZones"]
    assert [z["State"] for z in zones if z["ZoneName"] == "|- volumes"] == [f"0000 / {CAPACITY:04d} GiB"]
    with pytest.raises(ClientError) as err:
        other.create_volume(AvailabilityZone="zone1", Size=1)
    assert code(err) == "InsufficientVolumeCapacity"
    other.delete_volume(VolumeId=filler)
    ec2.delete_volume(VolumeId=big)
    zones = ec2.describe_availability_zones(ZoneNames=["verbose"])["AvailabilityZones"]
    assert [z["State"] for z in zones if z["ZoneName"] == "|- volumes"] == [f"{CAPACITY:04d} / {CAPACITY:04d} GiB"]


def test_koala_admin_volumes(cloud, alice, bob):
    """`koala admin volumes`: every account's volumes, and the zone's storage."""
    mine = client(cloud, alice).create_volume(AvailabilityZone="zone1", Size=2)["VolumeId"]
    theirs = client(cloud, bob).create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
    done = subprocess.run([sys.executable, "-m", "cli", "admin", "--state-dir", str(cloud.dir), "volumes"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"ZONE\tzone1\t{CAPACITY - 3} GiB free of {CAPACITY} GiB" in lines
    assert any(line.startswith(f"VOLUME\t{mine}\t{alice.account_id}\tzone1\t2 GiB\tavailable") for line in lines)
    assert any(line.startswith(f"VOLUME\t{theirs}\t{bob.account_id}\tzone1\t1 GiB") for line in lines)
    client(cloud, alice).delete_volume(VolumeId=mine)
    client(cloud, bob).delete_volume(VolumeId=theirs)


def test_isolation_between_accounts(cloud, alice, bob):
    mine = client(cloud, alice).create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
    theirs = client(cloud, bob)
    assert mine not in {v["VolumeId"] for v in theirs.describe_volumes()["Volumes"]}
    for call, kwargs in (
        (theirs.describe_volumes, {"VolumeIds": [mine]}),
        (theirs.delete_volume, {"VolumeId": mine}),
        (theirs.describe_volume_status, {"VolumeIds": [mine]}),
        (theirs.create_tags, {"Resources": [mine], "Tags": [{"Key": "k", "Value": "v"}]}),
        (theirs.create_snapshot, {"VolumeId": mine}),
    ):
        with pytest.raises(ClientError) as err:
            call(**kwargs)
        assert code(err) == "InvalidVolume.NotFound", call
    assert client(cloud, alice).describe_volumes(VolumeIds=[mine])["Volumes"][0]["State"] == "available"
    client(cloud, alice).delete_volume(VolumeId=mine)


def test_attach_bookkeeping_on_the_test_driver(cloud, alice, tmp_path_factory):
    """The CLC's and CC's state machines for attachments (the data path is tested under QEMU in test_guest.py):
    attach, in use, detach, refused for a terminated instance."""
    ec2 = client(cloud, alice)
    location = bundle_and_upload(cloud, tmp_path_factory.mktemp("bundle"), "machine", "ebs.bucket")
    image = ec2.register_image(ImageLocation=location, Name="ebs-test")["ImageId"]
    wait_zone_ready(cloud, alice)
    instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    wait_state(ec2, [instance], {"running"})
    volume = ec2.create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
    attached = ec2.attach_volume(VolumeId=volume, InstanceId=instance, Device="/dev/sdf")
    assert attached["State"] == "attached" and attached["Device"] == "/dev/sdf"
    described = ec2.describe_volumes(VolumeIds=[volume])["Volumes"][0]
    assert described["State"] == "in-use" and described["Attachments"][0]["InstanceId"] == instance
    spare = ec2.create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
    for call, kwargs, expected in (
        (ec2.delete_volume, {"VolumeId": volume}, "VolumeInUse"),
        (ec2.attach_volume, {"VolumeId": volume, "InstanceId": instance, "Device": "/dev/sdg"}, "VolumeInUse"),
        (ec2.attach_volume, {"VolumeId": spare, "InstanceId": instance, "Device": "/dev/sdf"}, "InvalidParameterValue"),
        (ec2.attach_volume, {"VolumeId": spare, "InstanceId": instance, "Device": "sdf"}, "InvalidParameterValue"),
        (ec2.attach_volume, {"VolumeId": spare, "InstanceId": "i-00000000", "Device": "/dev/sdg"},
         "InvalidInstanceID.NotFound"),
        (ec2.detach_volume, {"VolumeId": spare}, "IncorrectState"),
        (ec2.detach_volume, {"VolumeId": volume, "InstanceId": "i-00000001"}, "InvalidAttachment.NotFound"),
    ):  # fmt: skip
        with pytest.raises(ClientError) as err:
            call(**kwargs)
        assert code(err) == expected, kwargs
    by_instance = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [instance]}])
    assert [v["VolumeId"] for v in by_instance["Volumes"]] == [volume]
    # Live migration carries volumes along (tests/migration): with no other node here, only the lack of room stops it.
    refused = migrate_instance(cloud, instance)
    assert "InsufficientInstanceCapacity" in refused.errors[instance] and not refused.migrations
    # An instance-store instance can neither be stopped nor started (EC2's answer).
    with pytest.raises(ClientError) as err:
        ec2.stop_instances(InstanceIds=[instance])
    assert code(err) == "UnsupportedOperation"
    with pytest.raises(ClientError) as err:
        ec2.start_instances(InstanceIds=[instance])
    assert code(err) == "UnsupportedOperation"
    assert "UnsupportedOperation" in aws_error(cloud, alice, "stop-instances", "--instance-ids", instance)
    detached = ec2.detach_volume(VolumeId=volume)
    assert detached["State"] in ("detaching", "detached")
    assert wait_volume(ec2, volume, "available")["Attachments"] == []
    # A volume attached to an instance that is then terminated is given back.
    ec2.attach_volume(VolumeId=spare, InstanceId=instance, Device="/dev/sdh")
    ec2.terminate_instances(InstanceIds=[instance])
    wait_state(ec2, [instance], {"terminated"})
    assert wait_volume(ec2, spare, "available")["Attachments"] == []
    with pytest.raises(ClientError) as err:
        ec2.attach_volume(VolumeId=volume, InstanceId=instance, Device="/dev/sdf")
    assert code(err) == "IncorrectInstanceState"
    for volume_id in (volume, spare):
        ec2.delete_volume(VolumeId=volume_id)


def migrate_instance(cloud, instance_id: str):
    import asyncio

    from common.messages.migration import MigrateInstancesRequest, MigrateInstancesResponse

    async def call():
        admin = cloud.admin_client()
        try:
            request = MigrateInstancesRequest(instance_ids=[instance_id])
            return await admin.call(cloud.url("cc"), "MigrateInstances", request, MigrateInstancesResponse)
        finally:
            await admin.close()

    return asyncio.run(call())


def test_kill_cc_and_clc_while_creating_and_deleting(cloud, alice):
    """Volumes asked for while the CC is dead stay `creating`/`deleting`; after kill -9 of the CLC too, both come
    back and converge: nothing lost, no file left, no volume made twice."""
    ec2 = client(cloud, alice)
    doomed = ec2.create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
    cloud.kill("cc")
    try:
        pending = ec2.create_volume(AvailabilityZone="zone1", Size=2)
        assert pending["State"] == "creating"
        ec2.delete_volume(VolumeId=doomed)
        assert ec2.describe_volumes(VolumeIds=[doomed])["Volumes"][0]["State"] == "deleting"
        cloud.kill("clc")
    finally:
        cloud.start("clc", "cc")
    ec2 = client(cloud, alice)
    assert wait_volume(ec2, pending["VolumeId"], "available")["Size"] == 2
    wait_volume(ec2, doomed, "gone")
    files = volume_files(cloud)
    assert pending["VolumeId"] in files and doomed not in files
    assert len([v for v in ec2.describe_volumes()["Volumes"] if v["Size"] == 2]) == 1
    ec2.delete_volume(VolumeId=pending["VolumeId"])


def test_cc_restart_removes_stray_files(cloud, alice):
    """A volume file no record explains (a crash between the file and the record) is removed by the CC."""
    stray = cloud.dir / "data" / "cc-zone1" / "volumes" / "vol-0badf00d.img"
    stray.write_bytes(b"left behind")
    cloud.kill("cc")
    cloud.start("cc")
    deadline = time.monotonic() + 20
    while stray.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not stray.exists()
