"""EBS's data path with real QEMU guests: a volume exported by the CC's tgtd, opened by QEMU's own iSCSI initiator
on the guest's node, seen by the guest as a disk that appears and goes; data written in one guest, a snapshot kept
in Walrus, a volume made from it and attached to a second guest on another node reads the same data; the target
admits only the attachment's initiator; kill -9 of the CC around attach and detach converges.

One cloud for the module (tests/acceptance/world.py: the CC's router, SSH from the `pub` namespace into the guests'
public addresses), two NCs on qemu:///system, one guest on each.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from cli.allinone import qemu_usable
from cli.guest_image import ensure_registered
from common.messages.clc_cc import NodeInfo, RegisterNodeRequest
from services.node_controller.domain import ISCSI_QUEUE_SIZE
from tests.acceptance import ssh_probe
from tests.acceptance.world import acceptance_world
from tests.harness import Cloud
from tests.network.topology import Topology
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, libvirtd, tgtd)"),
    pytest.mark.timeout(900),  # the first test also pays for the module's two guests booting under emulation
]
NETS = ("10.236.0.0", "10.238.0", "10.237.0")  # apart from the acceptance test's


@dataclass
class Guests:
    cloud: Cloud
    topology: Topology
    ec2: object
    key_file: Path
    first: str  # instance ids, on two nodes
    second: str
    public: dict[str, str]

    def ssh(self, instance_id: str, command: str, check: bool = True) -> str:
        done = ssh_probe.run_in(self.topology, "pub", self.public[instance_id], self.key_file, command, 120)
        if check:
            assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
        return done.stdout

    def device_of(self, instance_id: str, volume_id: str) -> str:
        """The guest's disk whose serial is the volume id ('' when there is none)."""
        script = (
            'for d in /sys/block/vd*; do [ "$(cat $d/serial 2>/dev/null)" = "' + volume_id + '" ] && echo ${d##*/}; '
            "done; true"
        )
        return self.ssh(instance_id, script).strip()


def _ec2(cloud: Cloud):
    creds = cloud.admin_credentials()
    return boto3.client(
        "ec2", endpoint_url=creds["EC2_URL"], region_name="eucalyptus", aws_access_key_id=creds["EC2_ACCESS_KEY"],
        aws_secret_access_key=creds["EC2_SECRET_KEY"], config=Config(retries={"max_attempts": 1}),
    )  # fmt: skip


def _register(cloud: Cloud, node_url: str) -> None:
    async def call() -> None:
        client = cloud.admin_client()
        try:
            await client.call(cloud.url("cc"), "RegisterNode", RegisterNodeRequest(node=node_url), NodeInfo)
        finally:
            await client.close()

    asyncio.run(call())


def _console(ec2, instance_id: str) -> str:
    return ec2.get_console_output(InstanceId=instance_id).get("Output", "") or ""


def wait_volume(ec2, volume_id: str, state: str, attach: str | None = None, timeout: float = 60) -> dict:
    def check():
        volume = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
        attached = volume["Attachments"][0]["State"] if volume["Attachments"] else None
        return volume if volume["State"] == state and (attach is None or attached == attach) else None

    return wait_for(check, timeout, interval=0.3, what=f"{volume_id} {state} {attach or ''}")


def portal_of(cloud: Cloud) -> str:
    return cloud.aio.conf_path("cc").read_text().split("KOALA_EBS_PORTAL=", 1)[1].split()[0].strip("'\"")


def tgt_targets(cloud: Cloud) -> str:
    port = int(portal_of(cloud).rsplit(":", 1)[1])
    done = subprocess.run(["tgtadm", "-C", str(port % 32768), "--lld", "iscsi", "--op", "show", "--mode", "target"],
                          capture_output=True, text=True)  # fmt: skip
    return done.stdout if done.returncode == 0 else ""


@pytest.fixture(scope="module")
def guests(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guests]:
    if not qemu_usable():
        pytest.fail("libvirtd with QEMU is not usable: deploy/bootstrap.sh sets it up")
    instances = Path(f"/var/tmp/koala-ebs-{secrets.token_hex(3)}")  # readable by libvirt's qemu user
    instances.mkdir(mode=0o755)
    (instances / "node2").mkdir(mode=0o755)
    work = tmp_path_factory.mktemp("ebs-guest")
    extra = {"clc": {"KOALA_EBS_POLL_SECONDS": 1}, "cc": {"KOALA_EBS_RECONCILE_SECONDS": 1}}
    try:
        with acceptance_world(work, instances, prefix="ke", extra=extra, nets=NETS) as built:
            cloud = built.cloud
            node2 = cloud.add_node("node2", extra={"INSTANCE_PATH": instances / "node2"})  # its own cache
            node2.start()
            _register(cloud, node2.url)
            ec2 = _ec2(cloud)
            images = ensure_registered(cloud.dir, cloud.aio.admin_eucarc_source(), log=lambda _: None)
            key = ec2.create_key_pair(KeyName="ebs")
            key_file = work / "ebs.pem"
            key_file.write_text(key["KeyMaterial"])
            key_file.chmod(0o600)
            ec2.create_security_group(GroupName="ssh", Description="ssh")
            ec2.authorize_security_group_ingress(GroupName="ssh", IpProtocol="tcp", FromPort=22, ToPort=22,
                                                 CidrIp="0.0.0.0/0")  # fmt: skip
            wait_for(lambda: len(cloud.admin_credentials()) and _two_nodes_up(cloud), 60, what="both nodes up")
            ids = []
            try:
                for _ in range(2):  # one at a time: ROUNDROBIN puts them on the two nodes
                    answer = ec2.run_instances(ImageId=images["machine"], MinCount=1, MaxCount=1, KeyName="ebs",
                                               SecurityGroups=["ssh"], InstanceType="c1.medium")  # fmt: skip
                    ids.append(answer["Instances"][0]["InstanceId"])
                public = {}
                for instance_id in ids:
                    wait_for(lambda i=instance_id: f"KOALA-GUEST ready instance={i}" in _console(ec2, i), 240, 1.0,
                             f"{instance_id} ready")  # fmt: skip
                    found = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
                    public[instance_id] = found["PublicIpAddress"]
                yield Guests(cloud, built.topology, ec2, key_file, ids[0], ids[1], public)
            finally:
                if ids:
                    ec2.terminate_instances(InstanceIds=ids)
                    wait_for(lambda: _all_terminated(ec2, ids), 120, 1.0, "guests terminated")
    finally:
        shutil.rmtree(instances, ignore_errors=True)


def _two_nodes_up(cloud: Cloud) -> bool:
    from common.messages.clc_cc import DescribeNodesResponse

    async def call() -> DescribeNodesResponse:
        client = cloud.admin_client()
        try:
            return await client.call(cloud.url("cc"), "DescribeNodes", None, DescribeNodesResponse)
        finally:
            await client.close()

    nodes = asyncio.run(call()).nodes
    return sum(1 for n in nodes if n.state == "UP") == 2


def _all_terminated(ec2, ids: list[str]) -> bool:
    reservations = ec2.describe_instances(InstanceIds=ids)["Reservations"]
    return all(i["State"]["Name"] == "terminated" for r in reservations for i in r["Instances"])


def _node_of(cloud: Cloud, instance_id: str) -> str:
    from common.messages.clc_cc import DescribeInstancesResponse, InstanceIdsRequest

    async def call() -> DescribeInstancesResponse:
        client = cloud.admin_client()
        try:
            request = InstanceIdsRequest(instance_ids=[instance_id])
            return await client.call(cloud.url("cc"), "DescribeInstances", request, DescribeInstancesResponse)
        finally:
            await client.close()

    return asyncio.run(call()).instances[0].node_id


def test_data_written_in_one_guest_reads_back_in_another_from_a_snapshot(guests: Guests) -> None:
    ec2, first, second = guests.ec2, guests.first, guests.second
    assert _node_of(guests.cloud, first) != _node_of(guests.cloud, second)
    volume = ec2.create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
    attached = ec2.attach_volume(VolumeId=volume, InstanceId=first, Device="/dev/sdf")
    assert attached["State"] == "attached"
    device = wait_for(lambda: guests.device_of(first, volume), 60, 1.0, "the disk in the first guest")
    assert f"iqn.2010-01.org.koala:zone1.{volume}" in tgt_targets(guests.cloud)
    # The volume's virtio queue bounds the guest's requests to 62 segments (248 KiB of scattered pages), within the
    # 256 KiB QEMU's iSCSI initiator sends as immediate data.
    segments = guests.ssh(first, f"cat /sys/block/{device}/queue/max_segments").strip()
    assert segments == str(ISCSI_QUEUE_SIZE - 2)
    # Only the attachment's initiator may log in: QEMU without it is refused by the target's ACL.
    portal = portal_of(guests.cloud)
    probe = subprocess.run(["qemu-img", "info", f"iscsi://{portal}/iqn.2010-01.org.koala:zone1.{volume}/1"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert probe.returncode != 0, probe.stdout

    written = guests.ssh(
        first,
        f"dd if=/dev/urandom of=/tmp/data bs=1M count=4 2>/dev/null && dd if=/tmp/data of=/dev/{device} bs=1M "
        f"seek=8 conv=fsync 2>/dev/null && sync && md5sum /tmp/data",
    ).split()[0]
    assert len(written) == 32
    ec2.detach_volume(VolumeId=volume)
    wait_volume(ec2, volume, "available")
    wait_for(lambda: not guests.device_of(first, volume), 60, 1.0, "the disk gone from the first guest")
    assert volume not in tgt_targets(guests.cloud)  # no export left

    snapshot = ec2.create_snapshot(VolumeId=volume, Description="moved data")["SnapshotId"]
    wait_for(lambda: ec2.describe_snapshots(SnapshotIds=[snapshot])["Snapshots"][0]["State"] == "completed",
             120, 0.5, "the snapshot")  # fmt: skip
    restored = ec2.create_volume(AvailabilityZone="zone1", SnapshotId=snapshot)["VolumeId"]
    assert wait_volume(ec2, restored, "available")["SnapshotId"] == snapshot
    ec2.attach_volume(VolumeId=restored, InstanceId=second, Device="/dev/sdg")
    device = wait_for(lambda: guests.device_of(second, restored), 60, 1.0, "the disk in the second guest")
    read = guests.ssh(second, f"dd if=/dev/{device} bs=1M skip=8 count=4 2>/dev/null | md5sum").split()[0]
    assert read == written
    ec2.detach_volume(VolumeId=restored)
    wait_volume(ec2, restored, "available")
    for volume_id in (volume, restored):
        ec2.delete_volume(VolumeId=volume_id)
    ec2.delete_snapshot(SnapshotId=snapshot)
    wait_for(lambda: not ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"], 30, 0.5, "the snapshot deleted")


def test_kill_cc_around_attach_and_detach(guests: Guests) -> None:
    """The CC dies: an attach asked meanwhile is recorded `attaching` and finished when it is back; the CC dies
    with the volume attached: the guest keeps its disk (tgtd outlives the CC); a detach asked while it is dead
    finishes when it is back; nothing stays exported."""
    ec2, cloud, first = guests.ec2, guests.cloud, guests.first
    volume = ec2.create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
    cloud.kill("cc")
    try:
        answer = ec2.attach_volume(VolumeId=volume, InstanceId=first, Device="/dev/sdh")
        assert answer["State"] == "attaching"
    finally:
        cloud.start("cc")
    wait_volume(ec2, volume, "in-use", "attached")
    device = wait_for(lambda: guests.device_of(first, volume), 60, 1.0, "the disk after the CC came back")
    guests.ssh(first, f"echo koala-ebs | dd of=/dev/{device} conv=fsync 2>/dev/null")
    cloud.kill("cc")
    try:
        assert guests.ssh(first, f"dd if=/dev/{device} bs=9 count=1 2>/dev/null").startswith("koala-ebs")
        ec2.detach_volume(VolumeId=volume)
    finally:
        cloud.start("cc")
    wait_volume(ec2, volume, "available")
    wait_for(lambda: not guests.device_of(first, volume), 60, 1.0, "the disk gone")
    wait_for(lambda: volume not in tgt_targets(cloud), 30, 0.5, "its export removed")
    ec2.delete_volume(VolumeId=volume)


def test_kill_nc_around_attach_and_detach(guests: Guests) -> None:
    """The guest's NC dies: an attach asked meanwhile converges to attached once it is back (the CC undoes its
    half and the CLC asks again); the NC dies with the volume attached: the guest keeps its disk; a detach asked
    meanwhile finishes when it is back; nothing stays exported."""
    ec2, cloud = guests.ec2, guests.cloud
    guest = next(i for i in (guests.first, guests.second) if _node_of(cloud, i) == "nc-node1")  # the `nc` process
    volume = ec2.create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
    cloud.kill("nc")
    try:
        assert ec2.attach_volume(VolumeId=volume, InstanceId=guest, Device="/dev/sdi")["State"] == "attaching"
    finally:
        cloud.start("nc")
    wait_volume(ec2, volume, "in-use", "attached", timeout=90)
    device = wait_for(lambda: guests.device_of(guest, volume), 60, 1.0, "the disk after the NC came back")
    cloud.kill("nc")
    try:
        guests.ssh(guest, f"echo still-here | dd of=/dev/{device} conv=fsync 2>/dev/null")  # the disk still works
        assert ec2.detach_volume(VolumeId=volume)["State"] == "detaching"
    finally:
        cloud.start("nc")
    wait_volume(ec2, volume, "available", timeout=90)
    wait_for(lambda: not guests.device_of(guest, volume), 60, 1.0, "the disk gone")
    wait_for(lambda: volume not in tgt_targets(cloud), 30, 0.5, "its export removed")
    ec2.delete_volume(VolumeId=volume)


def _not_ready(ec2, instance_id: str) -> str:
    """What a timed-out wait for a guest names: its state, node and the end of its console."""
    found = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return f"{instance_id} ready ({found['State']['Name']}); its console ends:\n{_console(ec2, instance_id)[-3000:]}"


def _ready(guests: Guests, instance_id: str, after: int = 0) -> None:
    """Wait until the guest has booted (its console's ready line, the `after`+1-th one) and note its address."""
    ec2 = guests.ec2
    mark = f"KOALA-GUEST ready instance={instance_id}"
    wait_for(lambda: _console(ec2, instance_id).count(mark) > after, 300, 1.0, lambda: _not_ready(ec2, instance_id))
    found = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    guests.public[instance_id] = found["PublicIpAddress"]


def test_ebs_backed_guest_boots_stops_starts_and_is_imaged(guests: Guests) -> None:
    """A root file system copied onto a volume in a guest, snapshotted and registered as an EBS-backed image boots a
    guest whose root disk is that volume over iSCSI; a file written on it survives a stop and a start (perhaps on
    the other node), and CreateImage of it boots a third guest with the file there."""
    ec2, first = guests.ec2, guests.first
    machine = ec2.describe_instances(InstanceIds=[first])["Reservations"][0]["Instances"][0]
    image = ec2.describe_images(ImageIds=[machine["ImageId"]])["Images"][0]
    volume = ec2.create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
    ec2.attach_volume(VolumeId=volume, InstanceId=first, Device="/dev/sdj")
    device = wait_for(lambda: guests.device_of(first, volume), 60, 1.0, "the disk in the first guest")
    # The guest image's root file system is 32 MiB of ext4 at the start of its root disk.
    guests.ssh(first, f"sync && dd if=/dev/vda of=/dev/{device} bs=1M count=32 conv=fsync 2>/dev/null && sync")
    ec2.detach_volume(VolumeId=volume)
    wait_volume(ec2, volume, "available")
    snapshot = ec2.create_snapshot(VolumeId=volume, Description="guest root")["SnapshotId"]
    wait_for(lambda: ec2.describe_snapshots(SnapshotIds=[snapshot])["Snapshots"][0]["State"] == "completed",
             120, 0.5, "the root snapshot")  # fmt: skip
    ec2.delete_volume(VolumeId=volume)
    ebs_image = ec2.register_image(
        Name="guest-on-ebs", KernelId=image["KernelId"], RamdiskId=image["RamdiskId"], RootDeviceName="/dev/sda1",
        BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": snapshot}}],
    )["ImageId"]  # fmt: skip
    launched: list[str] = []
    copy = ""
    try:
        run = ec2.run_instances(ImageId=ebs_image, MinCount=1, MaxCount=1, KeyName="ebs", SecurityGroups=["ssh"],
                                InstanceType="c1.medium")  # fmt: skip
        instance = run["Instances"][0]["InstanceId"]
        launched.append(instance)
        assert run["Instances"][0]["RootDeviceType"] == "ebs"
        _ready(guests, instance)
        root = ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]
        root_volume = root["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
        assert guests.device_of(instance, root_volume) == "vda"  # the guest's root disk is the volume
        guests.ssh(instance, "echo kept-across-stop > /root/ebs-mark && sync")

        ec2.stop_instances(InstanceIds=[instance])
        wait_for(lambda: ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["State"]
                 ["Name"] == "stopped", 120, 1.0, "stopped")  # fmt: skip
        ec2.start_instances(InstanceIds=[instance])
        _ready(guests, instance)
        assert guests.ssh(instance, "cat /root/ebs-mark").strip() == "kept-across-stop"

        copy = ec2.create_image(InstanceId=instance, Name="guest-on-ebs-copy")["ImageId"]
        wait_for(lambda: ec2.describe_images(ImageIds=[copy])["Images"][0]["State"] == "available", 180, 1.0,
                 "the image of the instance")  # fmt: skip
        ec2.terminate_instances(InstanceIds=[instance])  # room for the third guest
        wait_for(lambda: _all_terminated(ec2, [instance]), 120, 1.0, "the EBS-backed guest terminated")
        third = ec2.run_instances(ImageId=copy, MinCount=1, MaxCount=1, KeyName="ebs", SecurityGroups=["ssh"],
                                  InstanceType="c1.medium")["Instances"][0]["InstanceId"]  # fmt: skip
        launched.append(third)
        _ready(guests, third)
        assert guests.ssh(third, "cat /root/ebs-mark").strip() == "kept-across-stop"
    finally:
        if launched:
            ec2.terminate_instances(InstanceIds=launched)
            wait_for(lambda: _all_terminated(ec2, launched), 120, 1.0, "EBS-backed guests terminated")
    # DeleteOnTermination (the default for a root): no volume is left.
    wait_for(lambda: not ec2.describe_volumes()["Volumes"], 60, 1.0, "the root volumes deleted")
    for image_id in (ebs_image, copy):
        if image_id:
            snapshots = [m["Ebs"]["SnapshotId"] for m in ec2.describe_images(ImageIds=[image_id])["Images"][0]
                         ["BlockDeviceMappings"]]  # fmt: skip
            ec2.deregister_image(ImageId=image_id)
            for snapshot_id in snapshots:
                ec2.delete_snapshot(SnapshotId=snapshot_id)
