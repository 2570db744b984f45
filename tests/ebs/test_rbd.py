"""EBS on Ceph RBD (KOALA_EBS_BACKEND=rbd) against real CLC, Walrus, CC and NC (libvirt test driver) processes and
the session's single-node Ceph cluster, through boto3: a volume is an RBD image of the zone's pool, a snapshot an
RBD snapshot of it, a volume made from a snapshot a clone that reads the snapshot's bytes; a volume deleted while
its snapshot lives keeps its image until the snapshot and the clones made from it are gone; attach/detach reach
the node with the image's place (no iSCSI export); an image no record explains is removed; kill -9 of the CC
while a volume is being made from a snapshot converges. The guest's view (QEMU's rbd driver) is in
test_rbd_guest.py."""

from __future__ import annotations

import os
import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest

from cli.ceph_local import CephCluster
from tests.ceph import ceph_settings, pool_io, rbd_images, unique
from tests.clc.compute_cloud import bundle_and_upload, wait_state, wait_zone_ready
from tests.clc.ec2_helpers import client, stop_clean
from tests.harness import Cloud
from tests.waiting import wait_for

GiB = 1 << 30


@pytest.fixture(scope="module")
def pool(ceph: CephCluster) -> str:
    name = unique("ebs")
    ceph.create_pool(name, "rbd")
    return name


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory, ceph: CephCluster, pool: str) -> Iterator[Cloud]:
    client_settings = ceph_settings(ceph)
    instance = Cloud(
        tmp_path_factory.mktemp("ebs-rbd") / "cloud",
        extra={
            "clc": {"KOALA_EBS_POLL_SECONDS": 1},
            "cc": {
                "KOALA_EBS_BACKEND": "rbd",
                "KOALA_EBS_RBD_POOL": pool,
                "KOALA_EBS_RECONCILE_SECONDS": 1,
                **client_settings,
            },
            "nc": client_settings,
        },
    )
    try:
        instance.start()
        yield instance
    finally:
        stop_clean(instance)


def wait_volume(ec2, volume_id: str, state: str, timeout: float = 60.0) -> dict:
    def check() -> dict | None:
        found = ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [volume_id]}])["Volumes"]
        if state == "gone":
            return None if found else {"VolumeId": volume_id, "State": "gone"}
        return found[0] if found and found[0]["State"] == state else None

    return wait_for(check, timeout, interval=0.2, what=f"{volume_id} {state}")


def wait_snapshot(ec2, snapshot_id: str) -> dict:
    def check() -> dict | None:
        found = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
        return found if found["State"] == "completed" else None

    return wait_for(check, 60, interval=0.2, what=f"{snapshot_id} completed")


def image_of(volume_id: str) -> str:
    return f"zone1.{volume_id}"


def write(ceph: CephCluster, pool: str, volume_id: str, offset: int, data: bytes) -> None:
    import rbd

    with pool_io(ceph, pool) as ioctx, rbd.Image(ioctx, image_of(volume_id)) as image:
        image.write(data, offset)
        image.flush()


def read(ceph: CephCluster, pool: str, volume_id: str, offset: int, length: int) -> tuple[bytes, int, str]:
    """(bytes, image size, parent snapshot name or '')."""
    import rbd

    with pool_io(ceph, pool) as ioctx, rbd.Image(ioctx, image_of(volume_id), read_only=True) as image:
        try:
            parent = image.get_parent_image_spec()["snap_name"]
        except rbd.ImageNotFound:
            parent = ""
        return image.read(offset, length), image.size(), parent


def snapshots_of(ceph: CephCluster, pool: str, volume_id: str) -> list[str]:
    import rbd

    with pool_io(ceph, pool) as ioctx, rbd.Image(ioctx, image_of(volume_id), read_only=True) as image:
        return [s["name"] for s in image.list_snaps()]


def test_volumes_snapshots_and_clones_are_rbd_images(cloud: Cloud, alice, ceph: CephCluster, pool: str) -> None:
    ec2 = client(cloud, alice)
    volume = ec2.create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
    wait_volume(ec2, volume, "available")
    assert image_of(volume) in rbd_images(ceph, pool)
    data = os.urandom(1 << 20)
    write(ceph, pool, volume, 7 << 20, data)  # as a guest would

    snapshot = ec2.create_snapshot(VolumeId=volume, Description="rbd")["SnapshotId"]
    wait_snapshot(ec2, snapshot)
    assert snapshots_of(ceph, pool, volume) == [snapshot]
    write(ceph, pool, volume, 7 << 20, b"\0" * len(data))  # the volume moves on; the snapshot keeps the old bytes

    restored = ec2.create_volume(AvailabilityZone="zone1", SnapshotId=snapshot, Size=2)["VolumeId"]
    assert wait_volume(ec2, restored, "available")["SnapshotId"] == snapshot
    body, size, parent = read(ceph, pool, restored, 7 << 20, len(data))
    assert body == data and size == 2 * GiB and parent == snapshot  # a copy-on-write clone, grown

    # The source volume goes while its snapshot lives: its image stays (the snapshot is in it).
    ec2.delete_volume(VolumeId=volume)
    wait_volume(ec2, volume, "gone")
    assert image_of(volume) in rbd_images(ceph, pool)
    third = ec2.create_volume(AvailabilityZone="zone1", SnapshotId=snapshot)["VolumeId"]
    wait_volume(ec2, third, "available")
    assert read(ceph, pool, third, 7 << 20, len(data))[0] == data
    # The snapshot goes while clones use it: Ceph keeps it for them; the image goes once nothing needs it.
    ec2.delete_snapshot(SnapshotId=snapshot)
    wait_for(lambda: not ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"], 30, 0.3, "the snapshot deleted")
    assert read(ceph, pool, restored, 7 << 20, len(data))[0] == data
    for volume_id in (restored, third):
        ec2.delete_volume(VolumeId=volume_id)
        wait_volume(ec2, volume_id, "gone")
    wait_for(lambda: not {i for i in rbd_images(ceph, pool) if i.startswith("zone1.")}, 30, 0.5, "no image left")


def test_attach_reaches_the_node_and_stray_images_go(
    cloud: Cloud, alice, ceph: CephCluster, pool: str, tmp_path_factory
) -> None:
    ec2 = client(cloud, alice)
    location = bundle_and_upload(cloud, tmp_path_factory.mktemp("bundle"), "machine", "rbd.bucket")
    image = ec2.register_image(ImageLocation=location, Name="rbd-test")["ImageId"]
    wait_zone_ready(cloud, alice)
    instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    wait_state(ec2, [instance], {"running"})
    volume = ec2.create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
    wait_volume(ec2, volume, "available")
    attached = ec2.attach_volume(VolumeId=volume, InstanceId=instance, Device="/dev/sdf")
    assert attached["State"] == "attached"
    assert wait_volume(ec2, volume, "in-use")["Attachments"][0]["InstanceId"] == instance
    # the node was given the image's place, not an iSCSI export (the test driver keeps the disk it would plug)
    (node_db,) = cloud.dir.glob("data/nc-*/nc.db")
    with sqlite3.connect(node_db) as db:
        (disk,) = db.execute("SELECT disk_xml FROM volume_attachments WHERE volume_id = ?", (volume,)).fetchone()
    assert 'protocol="rbd"' in disk and f'name="{pool}/{image_of(volume)}"' in disk and "iscsi" not in disk
    ec2.detach_volume(VolumeId=volume)
    assert wait_volume(ec2, volume, "available")["Attachments"] == []
    ec2.terminate_instances(InstanceIds=[instance])
    wait_state(ec2, [instance], {"terminated"})
    ec2.delete_volume(VolumeId=volume)
    wait_volume(ec2, volume, "gone")
    assert image_of(volume) not in rbd_images(ceph, pool)

    # An image no record explains (a crash between making the image and writing the record) is removed.
    import rbd

    with pool_io(ceph, pool) as ioctx:
        rbd.RBD().create(ioctx, "zone1.vol-0badf00d", 1 << 20)
        rbd.RBD().create(ioctx, "zone2.vol-0badf00d", 1 << 20)  # another zone's: not ours to remove
    wait_for(lambda: "zone1.vol-0badf00d" not in rbd_images(ceph, pool), 30, 0.3, "the stray image removed")
    assert "zone2.vol-0badf00d" in rbd_images(ceph, pool)


def test_kill_cc_while_cloning(cloud: Cloud, alice, ceph: CephCluster, pool: str) -> None:
    """Volumes asked for from a snapshot while the CC is dead stay `creating`; kill -9 of the CLC too; both come
    back and converge: the clone made once, with the snapshot's bytes."""
    ec2 = client(cloud, alice)
    volume = ec2.create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
    wait_volume(ec2, volume, "available")
    write(ceph, pool, volume, 0, b"koala-rbd")
    snapshot = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    wait_snapshot(ec2, snapshot)
    cloud.kill("cc")
    try:
        pending = ec2.create_volume(AvailabilityZone="zone1", SnapshotId=snapshot)
        assert pending["State"] == "creating"
        cloud.kill("clc")
    finally:
        cloud.start("clc", "cc")
    ec2 = client(cloud, alice)
    wait_volume(ec2, pending["VolumeId"], "available")
    assert read(ceph, pool, pending["VolumeId"], 0, 9)[0] == b"koala-rbd"
    assert len([i for i in rbd_images(ceph, pool) if i == image_of(pending["VolumeId"])]) == 1
    ec2.delete_volume(VolumeId=pending["VolumeId"])
    ec2.delete_volume(VolumeId=volume)
    ec2.delete_snapshot(SnapshotId=snapshot)
    wait_for(lambda: not {i for i in rbd_images(ceph, pool) if i.startswith("zone1.")}, 60, 0.5, "no image left")


def test_ebs_backed_instance_boots_from_an_rbd_root(cloud: Cloud, alice, ceph: CephCluster, pool: str) -> None:
    """An EBS-backed image whose root snapshot is an RBD snapshot: the instance's root volume is a clone of it, and
    the node's domain opens that image as its first disk (QEMU's rbd driver, no iSCSI export); the root goes with
    the instance (DeleteOnTermination)."""
    ec2 = client(cloud, alice)
    volume = ec2.create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
    wait_volume(ec2, volume, "available")
    write(ceph, pool, volume, 0, b"koala-rbd-root")
    snapshot = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    wait_snapshot(ec2, snapshot)
    image = ec2.register_image(
        Name="rbd-root", RootDeviceName="/dev/sda1",
        BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": snapshot}}],
    )["ImageId"]  # fmt: skip
    wait_zone_ready(cloud, alice)
    instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    wait_state(ec2, [instance], {"running"})
    found = ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]
    root = found["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    assert found["RootDeviceType"] == "ebs" and found["BlockDeviceMappings"][0]["DeviceName"] == "/dev/sda1"
    body, _, parent = read(ceph, pool, root, 0, 14)
    assert body == b"koala-rbd-root" and parent == snapshot
    (domain_xml,) = cloud.dir.glob(f"**/{instance}/libvirt.xml")
    disks = ET.fromstring(domain_xml.read_text()).findall("devices/disk")
    assert disks[0].get("type") == "network" and disks[0].find("serial").text == root
    source = disks[0].find("source")
    assert source.get("protocol") == "rbd" and source.get("name") == f"{pool}/{image_of(root)}"
    assert disks[0].find("auth").get("username") == ceph_settings(ceph)["KOALA_CEPH_USER"]

    ec2.terminate_instances(InstanceIds=[instance])
    wait_state(ec2, [instance], {"terminated"})
    wait_volume(ec2, root, "gone")
    ec2.deregister_image(ImageId=image)
    ec2.delete_snapshot(SnapshotId=snapshot)
    ec2.delete_volume(VolumeId=volume)
    wait_for(lambda: not {i for i in rbd_images(ceph, pool) if i.startswith("zone1.")}, 60, 0.5, "no image left")
