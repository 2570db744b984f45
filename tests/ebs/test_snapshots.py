"""EBS snapshots against real CLC, Walrus, CC and NC processes, through boto3 and awscli: compressed chunks in
Walrus (a second snapshot stores only the changed chunks), volumes restored from them byte for byte, deletion that
keeps what later snapshots need and leaves no object behind, DescribeSnapshots with OwnerIds/RestorableByUserIds,
filters and paging over 200 snapshots, createVolumePermission between accounts, bad input, and kill -9 of the CC
while a snapshot is being taken.

Volume contents are written into the CC's volume files here (the guest's path to them is test_guest.py's)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from common.hostcmd import SubprocessRunner
from common.messages.storage import DescribeStorageRequest, DescribeStorageResponse
from services.cluster_controller.storage import volume_fs
from tests.clc.ec2_helpers import aws, client, code, stop_clean
from tests.harness import Cloud
from tests.waiting import wait_for

MIB = 1 << 20
CHUNK = 4 * MIB


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    """The zone's volumes on the XFS image with reflinks that the CC makes and mounts itself on this machine's ext4
    (KOALA_EBS_XFS_IMAGE_GB, as `koala up` sets it): snapshots read frozen copies, the next one only its changed
    chunks (the other EBS modules keep theirs on ext4, where snapshots read the live file in full)."""
    work = tmp_path_factory.mktemp("snapshots")
    volumes = work / "volumes"
    instance = Cloud(
        work / "cloud",
        extra={"clc": {"KOALA_EBS_POLL_SECONDS": 1},
               "cc": {"KOALA_EBS_CAPACITY_GB": 2000, "KOALA_EBS_DIR": str(volumes), "KOALA_EBS_XFS_IMAGE_GB": 6}},
    )  # fmt: skip
    instance.ebs_dir = volumes  # type: ignore[attr-defined]
    try:
        instance.start()
        yield instance
    finally:
        try:
            stop_clean(instance)
        finally:
            asyncio.run(volume_fs.release(volumes, SubprocessRunner()))


def volume_file(cloud: Cloud, volume_id: str) -> Path:
    base = getattr(cloud, "ebs_dir", None) or cloud.dir / "data" / "cc-zone1" / "volumes"
    return base / f"{volume_id}.img"


def storage(cloud: Cloud) -> DescribeStorageResponse:
    async def call() -> DescribeStorageResponse:
        rpc = cloud.admin_client()
        try:
            return await rpc.call(cloud.url("cc"), "DescribeStorage", DescribeStorageRequest(), DescribeStorageResponse)
        finally:
            await rpc.close()

    return asyncio.run(call())


def stored_objects(cloud: Cloud) -> set[str]:
    rc = cloud.admin_credentials()
    s3 = boto3.client("s3", endpoint_url=rc["S3_URL"], region_name="eucalyptus", aws_access_key_id=rc["EC2_ACCESS_KEY"],
                      aws_secret_access_key=rc["EC2_SECRET_KEY"],
                      config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"))  # fmt: skip
    try:
        pages = s3.get_paginator("list_objects").paginate(Bucket="koala-snapshots")
        return {item["Key"] for page in pages for item in page.get("Contents", [])}
    except ClientError:
        return set()


def wait_snapshot(ec2, snapshot_id: str, timeout: float = 120) -> dict:
    def check():
        found = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
        assert found["State"] != "error", found
        return found if found["State"] == "completed" else None

    return wait_for(check, timeout, 0.2, f"{snapshot_id} completed")


def wait_available(ec2, volume_id: str) -> dict:
    return wait_for(lambda: (v := ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0])["State"] == "available"
                    and v, 120, 0.2, f"{volume_id} available")  # fmt: skip


def digest(path: Path, offset: int, length: int) -> str:
    with path.open("rb") as file:
        file.seek(offset)
        return hashlib.sha256(file.read(length)).hexdigest()


def test_incremental_snapshots_restore_and_delete(cloud, alice):
    ec2 = client(cloud, alice)
    volume = ec2.create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
    path = volume_file(cloud, volume)
    with path.open("r+b") as file:  # 40 MiB of random data (10 chunks) and 8 MiB of text (2) in a sparse 1 GiB volume
        file.seek(64 * MIB)
        file.write(os.urandom(40 * MIB))
        file.seek(512 * MIB)
        file.write((b"koala volume text " * (8 * MIB // 18 + 1))[: 8 * MIB])
    tagged = [{"ResourceType": "snapshot", "Tags": [{"Key": "n", "Value": "1"}]}]
    first = ec2.create_snapshot(VolumeId=volume, Description="first", TagSpecifications=tagged)
    assert first["State"] == "pending" and first["VolumeSize"] == 1 and first["Tags"] == [{"Key": "n", "Value": "1"}]
    wait_snapshot(ec2, first["SnapshotId"])
    with path.open("r+b") as file:  # change one chunk
        file.seek(64 * MIB + CHUNK)
        file.write(os.urandom(CHUNK))
    second = ec2.create_snapshot(VolumeId=volume, Description="second")["SnapshotId"]
    wait_snapshot(ec2, second)
    stored = {s.snapshot_id: s.stored_bytes for s in storage(cloud).snapshots}
    # Random data is stored as is (it does not compress), the text compressed to almost nothing.
    assert 40 * MIB <= stored[first["SnapshotId"]] < 40 * MIB + 256 * 1024
    assert CHUNK <= stored[second] < CHUNK + MIB  # only the changed chunk
    chunks = {k for k in stored_objects(cloud) if "/chunks/" in k}
    assert len(chunks) == 13
    expected = digest(path, 0, 1 << 30)

    ec2.delete_snapshot(SnapshotId=first["SnapshotId"])  # the second still needs 9 of its chunks
    wait_for(lambda: first["SnapshotId"] not in {s.snapshot_id for s in storage(cloud).snapshots}, 30, 0.2, "gone")
    assert len({k for k in stored_objects(cloud) if "/chunks/" in k}) == 12
    restored = ec2.create_volume(AvailabilityZone="zone1", SnapshotId=second, Size=2)["VolumeId"]
    wait_available(ec2, restored)
    restored_path = volume_file(cloud, restored)
    assert restored_path.stat().st_size == 2 << 30
    assert digest(restored_path, 0, 1 << 30) == expected
    assert restored_path.stat().st_blocks * 512 < 100 * MIB  # zero chunks stay holes

    ec2.delete_snapshot(SnapshotId=second)
    wait_for(lambda: not stored_objects(cloud), 30, 0.2, "no object left in Walrus")
    for volume_id in (volume, restored):
        ec2.delete_volume(VolumeId=volume_id)


def test_incremental_snapshot_reads_only_changed_chunks(cloud, alice):
    """On a file system with reflinks the second snapshot compares the frozen copies' extent maps and reads only the
    chunks written since the first (the CC says how many); the result restores byte for byte, and the frozen copies
    go with their volume."""
    ec2 = client(cloud, alice)
    assert os.path.ismount(cloud.ebs_dir) and volume_fs.image_path(cloud.ebs_dir).exists()  # the CC's XFS image
    volume = ec2.create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
    path = volume_file(cloud, volume)
    with path.open("r+b") as file:
        file.write(os.urandom(64 * MIB))
    first = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    wait_snapshot(ec2, first)
    with path.open("r+b") as file:  # chunks 2 and 9 (of 256)
        for chunk in (2, 9):
            file.seek(chunk * CHUNK + 4096)
            file.write(os.urandom(8192))
    second = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    wait_snapshot(ec2, second)
    assert f"{second}: 2 of 256 chunks changed since {first}" in cloud.log("cc")
    assert sorted(p.name for p in (cloud.ebs_dir / ".frozen").iterdir()) == [f"{volume}.{second}.img"]
    restored = ec2.create_volume(AvailabilityZone="zone1", SnapshotId=second)["VolumeId"]
    wait_available(ec2, restored)
    assert digest(volume_file(cloud, restored), 0, 64 * MIB) == digest(path, 0, 64 * MIB)
    for volume_id in (volume, restored):
        ec2.delete_volume(VolumeId=volume_id)
    wait_for(lambda: not list((cloud.ebs_dir / ".frozen").iterdir()), 30, 0.3, "the frozen copies gone")
    for snapshot_id in (first, second):
        ec2.delete_snapshot(SnapshotId=snapshot_id)
    wait_for(lambda: not stored_objects(cloud), 30, 0.2, "no object left in Walrus")


def test_describe_paging_permissions_between_accounts(cloud, alice, bob):
    ec2, other = client(cloud, alice), client(cloud, bob)
    volume = ec2.create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
    made = [ec2.create_snapshot(VolumeId=volume, Description=f"s{i}")["SnapshotId"] for i in range(200)]
    try:
        wait_for(lambda: all(s["State"] == "completed" for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]),
                 120, 0.5, "200 snapshots")  # fmt: skip
        pages = ec2.get_paginator("describe_snapshots").paginate(OwnerIds=["self"], PaginationConfig={"PageSize": 45})
        seen = [s["SnapshotId"] for p in pages for s in p["Snapshots"]]
        assert sorted(seen) == sorted(made)
        listed = aws(cloud, alice, "describe-snapshots", "--owner-ids", "self", "--page-size", "60")["Snapshots"]
        assert len(listed) == 200
        filtered = ec2.describe_snapshots(Filters=[{"Name": "description", "Values": ["s1?"]}])["Snapshots"]
        assert len(filtered) == 10
        assert not other.describe_snapshots(OwnerIds=["self"])["Snapshots"]
        assert not other.describe_snapshots()["Snapshots"]

        shared, public = made[0], made[1]
        ec2.modify_snapshot_attribute(SnapshotId=shared, Attribute="createVolumePermission",
                                      CreateVolumePermission={"Add": [{"UserId": bob.account_id}]})  # fmt: skip
        aws(cloud, alice, "modify-snapshot-attribute", "--snapshot-id", public, "--attribute",
            "createVolumePermission", "--operation-type", "add", "--group-names", "all")  # fmt: skip
        permissions = ec2.describe_snapshot_attribute(SnapshotId=shared, Attribute="createVolumePermission")
        assert permissions["CreateVolumePermissions"] == [{"UserId": bob.account_id}]
        theirs = {s["SnapshotId"] for s in other.describe_snapshots(RestorableByUserIds=["self"])["Snapshots"]}
        assert theirs == {shared, public}
        assert {s["SnapshotId"] for s in other.describe_snapshots(RestorableByUserIds=["all"])["Snapshots"]} == {public}
        assert {s["SnapshotId"] for s in other.describe_snapshots(OwnerIds=[alice.account_id])["Snapshots"]} == {
            shared, public}  # fmt: skip
        copy = other.create_volume(AvailabilityZone="zone1", SnapshotId=shared)["VolumeId"]
        wait_available(other, copy)
        other.delete_volume(VolumeId=copy)
        for call, kwargs, expected in (
            (other.delete_snapshot, {"SnapshotId": shared}, "InvalidSnapshot.NotFound"),
            (other.modify_snapshot_attribute, {"SnapshotId": shared, "Attribute": "createVolumePermission",
             "CreateVolumePermission": {"Add": [{"Group": "all"}]}}, "InvalidSnapshot.NotFound"),
            (other.describe_snapshot_attribute, {"SnapshotId": shared, "Attribute": "createVolumePermission"},
             "InvalidSnapshot.NotFound"),
            (other.create_snapshot, {"VolumeId": volume}, "InvalidVolume.NotFound"),
            (other.create_volume, {"AvailabilityZone": "zone1", "SnapshotId": made[2]}, "InvalidSnapshot.NotFound"),
        ):  # fmt: skip
            with pytest.raises(ClientError) as err:
                call(**kwargs)
            assert code(err) == expected, kwargs
        ec2.reset_snapshot_attribute(SnapshotId=shared, Attribute="createVolumePermission")
        ec2.modify_snapshot_attribute(SnapshotId=public, Attribute="createVolumePermission",
                                      CreateVolumePermission={"Remove": [{"Group": "all"}]})  # fmt: skip
        assert not other.describe_snapshots()["Snapshots"]
        with pytest.raises(ClientError) as err:
            other.create_volume(AvailabilityZone="zone1", SnapshotId=shared)
        assert code(err) == "InvalidSnapshot.NotFound"
    finally:
        for snapshot_id in made:
            ec2.delete_snapshot(SnapshotId=snapshot_id)
        ec2.delete_volume(VolumeId=volume)
    wait_for(lambda: not stored_objects(cloud), 60, 0.5, "no object left in Walrus")


def test_bad_input(cloud, alice):
    ec2 = client(cloud, alice)
    volume = ec2.create_volume(AvailabilityZone="zone1", Size=2)["VolumeId"]
    snapshot = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    wait_snapshot(ec2, snapshot)
    for call, kwargs, expected in (
        (ec2.delete_snapshot, {"SnapshotId": "snap-00000000"}, "InvalidSnapshot.NotFound"),
        (ec2.delete_snapshot, {"SnapshotId": "snapshot-1"}, "InvalidSnapshotID.Malformed"),
        (ec2.create_snapshot, {"VolumeId": "vol-00000000"}, "InvalidVolume.NotFound"),
        (ec2.create_snapshot, {"VolumeId": volume, "Description": "x" * 256}, "InvalidParameterValue"),
        (ec2.describe_snapshots, {"SnapshotIds": [snapshot], "MaxResults": 5}, "InvalidParameterCombination"),
        (ec2.describe_snapshots, {"MaxResults": 1001}, "InvalidParameterValue"),
        (ec2.describe_snapshots, {"Filters": [{"Name": "colour", "Values": ["x"]}]}, "InvalidParameterValue"),
        (ec2.create_volume, {"AvailabilityZone": "zone1", "SnapshotId": snapshot, "Size": 1}, "InvalidParameterValue"),
        (ec2.modify_snapshot_attribute, {"SnapshotId": snapshot, "Attribute": "createVolumePermission",
         "CreateVolumePermission": {"Add": [{"UserId": "not-an-account"}]}}, "InvalidParameterValue"),
        (ec2.modify_snapshot_attribute, {"SnapshotId": snapshot, "Attribute": "createVolumePermission",
         "CreateVolumePermission": {"Add": [{"Group": "everyone"}]}}, "InvalidParameterValue"),
        (ec2.describe_snapshot_attribute, {"SnapshotId": snapshot, "Attribute": "colour"}, "InvalidParameterValue"),
    ):  # fmt: skip
        with pytest.raises(ClientError) as err:
            call(**kwargs)
        assert code(err) == expected, kwargs
    ec2.delete_snapshot(SnapshotId=snapshot)
    ec2.delete_volume(VolumeId=volume)


def test_kill_cc_while_snapshotting(cloud, alice):
    """kill -9 of the CC with a snapshot half taken: it is taken again at restart, completes, and Walrus holds
    exactly the chunks it lists."""
    ec2 = client(cloud, alice)
    volume = ec2.create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
    with volume_file(cloud, volume).open("r+b") as file:
        file.write(os.urandom(256 * MIB))
    snapshot = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    cloud.kill("cc")
    cloud.start("cc")
    assert wait_snapshot(ec2, snapshot)["Progress"] == "100%"
    wait_for(lambda: len({k for k in stored_objects(cloud) if "/chunks/" in k}) == 64, 30, 0.5, "exactly 64 chunks")
    restored = ec2.create_volume(AvailabilityZone="zone1", SnapshotId=snapshot)["VolumeId"]
    wait_available(ec2, restored)
    assert digest(volume_file(cloud, restored), 0, 256 * MIB) == digest(volume_file(cloud, volume), 0, 256 * MIB)
    ec2.delete_snapshot(SnapshotId=snapshot)
    for volume_id in (volume, restored):
        ec2.delete_volume(VolumeId=volume_id)
    wait_for(lambda: not stored_objects(cloud), 30, 0.5, "no object left in Walrus")
