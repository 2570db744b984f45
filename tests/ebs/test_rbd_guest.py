"""EBS on Ceph RBD with a real QEMU guest: the zone keeps its volumes in the session's Ceph cluster
(KOALA_EBS_BACKEND=rbd); the node plugs a volume in as a libvirt rbd disk that QEMU's own rbd driver opens with the
node's Ceph key (a private libvirt secret; no iSCSI, no kernel module). Data the guest writes is in the image; a
snapshot (an RBD snapshot) restored into a new volume and attached to the same guest reads the same bytes.

One cloud (tests/acceptance/world.py: SSH from the `pub` namespace into the guest's public address), one NC on
qemu:///system, one guest.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from cli.allinone import qemu_usable
from cli.ceph_local import CephCluster
from cli.guest_image import ensure_registered
from tests.acceptance import ssh_probe
from tests.acceptance.world import acceptance_world
from tests.ceph import ceph_settings, pool_io, rbd_images, unique
from tests.harness import Cloud
from tests.network.topology import Topology
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, libvirtd)"),
    pytest.mark.timeout(900),
]
NETS = ("10.226.0.0", "10.228.0", "10.227.0")  # apart from the acceptance, EBS and migration tests'


@dataclass
class Guest:
    cloud: Cloud
    topology: Topology
    ec2: object
    key_file: Path
    instance_id: str
    address: str
    pool: str

    def ssh(self, command: str) -> str:
        done = ssh_probe.run_in(self.topology, "pub", self.address, self.key_file, command, 120)
        assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
        return done.stdout

    def device_of(self, volume_id: str) -> str:
        script = (
            'for d in /sys/block/vd*; do [ "$(cat $d/serial 2>/dev/null)" = "' + volume_id + '" ] && echo ${d##*/}; '
            "done; true"
        )
        return self.ssh(script).strip()


def _console(ec2, instance_id: str) -> str:
    return ec2.get_console_output(InstanceId=instance_id).get("Output", "") or ""


def wait_volume(ec2, volume_id: str, state: str, timeout: float = 60) -> dict:
    def check():
        volume = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
        return volume if volume["State"] == state else None

    return wait_for(check, timeout, interval=0.3, what=f"{volume_id} {state}")


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory, ceph: CephCluster) -> Iterator[Guest]:
    if not qemu_usable():
        pytest.fail("libvirtd with QEMU is not usable: deploy/bootstrap.sh sets it up")
    pool = unique("ebs")
    ceph.create_pool(pool, "rbd")
    client = ceph_settings(ceph)
    instances = Path(f"/var/tmp/koala-rbd-{secrets.token_hex(3)}")  # readable by libvirt's qemu user
    instances.mkdir(mode=0o755)
    work = tmp_path_factory.mktemp("rbd-guest")
    extra = {
        "clc": {"KOALA_EBS_POLL_SECONDS": 1},
        "cc": {"KOALA_EBS_BACKEND": "rbd", "KOALA_EBS_RBD_POOL": pool, "KOALA_EBS_RECONCILE_SECONDS": 1, **client},
        "nc": client,
    }
    try:
        with acceptance_world(work, instances, prefix="kr", extra=extra, nets=NETS) as built:
            cloud = built.cloud
            creds = cloud.admin_credentials()
            ec2 = boto3.client(
                "ec2", endpoint_url=creds["EC2_URL"], region_name="eucalyptus",
                aws_access_key_id=creds["EC2_ACCESS_KEY"], aws_secret_access_key=creds["EC2_SECRET_KEY"],
                config=Config(retries={"max_attempts": 1}),
            )  # fmt: skip
            images = ensure_registered(cloud.dir, cloud.aio.admin_eucarc_source(), log=lambda _: None)
            key = ec2.create_key_pair(KeyName="rbd")
            key_file = work / "rbd.pem"
            key_file.write_text(key["KeyMaterial"])
            key_file.chmod(0o600)
            ec2.create_security_group(GroupName="ssh", Description="ssh")
            ec2.authorize_security_group_ingress(GroupName="ssh", IpProtocol="tcp", FromPort=22, ToPort=22,
                                                 CidrIp="0.0.0.0/0")  # fmt: skip
            answer = ec2.run_instances(ImageId=images["machine"], MinCount=1, MaxCount=1, KeyName="rbd",
                                       SecurityGroups=["ssh"], InstanceType="c1.medium")  # fmt: skip
            instance_id = answer["Instances"][0]["InstanceId"]
            try:
                wait_for(lambda: f"KOALA-GUEST ready instance={instance_id}" in _console(ec2, instance_id), 240,
                         1.0, f"{instance_id} ready")  # fmt: skip
                found = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
                yield Guest(cloud, built.topology, ec2, key_file, instance_id, found["PublicIpAddress"], pool)
            finally:
                ec2.terminate_instances(InstanceIds=[instance_id])
                wait_for(
                    lambda: (
                        ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"][
                            "Name"
                        ]
                        == "terminated"
                    ),
                    120,
                    1.0,
                    "the guest terminated",
                )
    finally:
        shutil.rmtree(instances, ignore_errors=True)


def test_guest_writes_to_an_rbd_volume_and_reads_a_restored_snapshot(guest: Guest, ceph: CephCluster) -> None:
    ec2 = guest.ec2
    volume = ec2.create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
    wait_volume(ec2, volume, "available")
    assert ec2.attach_volume(VolumeId=volume, InstanceId=guest.instance_id, Device="/dev/sdf")["State"] == "attached"
    device = wait_for(lambda: guest.device_of(volume), 60, 1.0, "the disk in the guest")
    written = guest.ssh(
        f"dd if=/dev/urandom of=/tmp/data bs=1M count=4 2>/dev/null && dd if=/tmp/data of=/dev/{device} bs=1M "
        f"seek=8 conv=fsync 2>/dev/null && sync && md5sum /tmp/data"
    ).split()[0]
    assert len(written) == 32

    # The bytes are in the RBD image, as Ceph itself reads them.
    import hashlib

    import rbd

    with pool_io(ceph, guest.pool) as ioctx, rbd.Image(ioctx, f"zone1.{volume}", read_only=True) as image:
        assert hashlib.md5(image.read(8 << 20, 4 << 20)).hexdigest() == written

    snapshot = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    wait_for(lambda: ec2.describe_snapshots(SnapshotIds=[snapshot])["Snapshots"][0]["State"] == "completed",
             60, 0.5, "the snapshot")  # fmt: skip
    guest.ssh(f"dd if=/dev/zero of=/dev/{device} bs=1M seek=8 count=4 conv=fsync 2>/dev/null")  # moves on
    restored = ec2.create_volume(AvailabilityZone="zone1", SnapshotId=snapshot)["VolumeId"]
    wait_volume(ec2, restored, "available")
    ec2.attach_volume(VolumeId=restored, InstanceId=guest.instance_id, Device="/dev/sdg")
    second = wait_for(lambda: guest.device_of(restored), 60, 1.0, "the restored disk in the guest")
    assert guest.ssh(f"dd if=/dev/{second} bs=1M skip=8 count=4 2>/dev/null | md5sum").split()[0] == written
    assert guest.ssh(f"dd if=/dev/{device} bs=1M skip=8 count=4 2>/dev/null | md5sum").split()[0] != written

    for volume_id in (volume, restored):
        ec2.detach_volume(VolumeId=volume_id)
        wait_volume(ec2, volume_id, "available")
    wait_for(lambda: not guest.device_of(volume) and not guest.device_of(restored), 60, 1.0, "the disks gone")
    for volume_id in (restored, volume):
        ec2.delete_volume(VolumeId=volume_id)
    ec2.delete_snapshot(SnapshotId=snapshot)
    wait_for(lambda: not {i for i in rbd_images(ceph, guest.pool) if i.startswith("zone1.")}, 60, 0.5,
             "the images removed")  # fmt: skip


def test_ebs_backed_guest_boots_from_an_rbd_root(guest: Guest, ceph: CephCluster) -> None:
    """The guest's root file system copied onto an RBD volume, snapshotted and registered as an EBS-backed image,
    boots a second guest whose root disk (vda) is a clone of that snapshot, opened by QEMU's rbd driver."""
    ec2 = guest.ec2
    machine = ec2.describe_instances(InstanceIds=[guest.instance_id])["Reservations"][0]["Instances"][0]
    image = ec2.describe_images(ImageIds=[machine["ImageId"]])["Images"][0]
    volume = ec2.create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
    wait_volume(ec2, volume, "available")
    ec2.attach_volume(VolumeId=volume, InstanceId=guest.instance_id, Device="/dev/sdh")
    device = wait_for(lambda: guest.device_of(volume), 60, 1.0, "the disk in the guest")
    # The guest image's root file system is 32 MiB of ext4 at the start of its root disk.
    guest.ssh(f"echo on-rbd > /root/rbd-mark && sync && dd if=/dev/vda of=/dev/{device} bs=1M count=32 conv=fsync "
              "2>/dev/null && sync")  # fmt: skip
    ec2.detach_volume(VolumeId=volume)
    wait_volume(ec2, volume, "available")
    snapshot = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    wait_for(lambda: ec2.describe_snapshots(SnapshotIds=[snapshot])["Snapshots"][0]["State"] == "completed",
             60, 0.5, "the root snapshot")  # fmt: skip
    ebs_image = ec2.register_image(
        Name="guest-on-rbd", KernelId=image["KernelId"], RamdiskId=image["RamdiskId"], RootDeviceName="/dev/sda1",
        BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": snapshot}}],
    )["ImageId"]  # fmt: skip
    run = ec2.run_instances(ImageId=ebs_image, MinCount=1, MaxCount=1, KeyName="rbd", SecurityGroups=["ssh"],
                            InstanceType="c1.medium")  # fmt: skip
    instance = run["Instances"][0]["InstanceId"]
    try:
        wait_for(lambda: f"KOALA-GUEST ready instance={instance}" in _console(ec2, instance), 240, 1.0,
                 f"{instance} ready")  # fmt: skip
        found = ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]
        root = found["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
        second = Guest(guest.cloud, guest.topology, ec2, guest.key_file, instance, found["PublicIpAddress"],
                       guest.pool)  # fmt: skip
        assert second.device_of(root) == "vda"  # the root disk is the RBD clone
        assert second.ssh("cat /root/rbd-mark").strip() == "on-rbd"
        assert f"zone1.{root}" in rbd_images(ceph, guest.pool)
    finally:
        ec2.terminate_instances(InstanceIds=[instance])
        wait_for(lambda: ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["State"]
                 ["Name"] == "terminated", 120, 1.0, "the RBD-rooted guest terminated")  # fmt: skip
    wait_for(lambda: root not in {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}, 60, 1.0,
             "its root deleted (DeleteOnTermination)")  # fmt: skip
    ec2.deregister_image(ImageId=ebs_image)
    ec2.delete_snapshot(SnapshotId=snapshot)
    ec2.delete_volume(VolumeId=volume)
