"""EBS-backed images and instances against real CLC, Walrus, CC (with its storage and tgtd) and NC (libvirt test
driver) processes, through boto3 and awscli: RegisterImage with a root snapshot, DescribeImages, RunInstances with
launch mappings (root made from the snapshot, an extra empty volume), DescribeInstances' root device type and block
device mappings, StopInstances/StartInstances (volumes stay, exports follow the runs), CreateImage and a launch of
it, DeleteOnTermination, bad input with EC2's codes, and kill -9 of the CC and the CLC while instances stop and start.

The root volume's contents are written into the CC's volume files here; a guest booting from one is test_guest.py's.
"""

from __future__ import annotations

import os

import pytest
from botocore.exceptions import ClientError

from services.cluster_controller.storage.tgt import parse_show
from tests.clc.compute_cloud import registered_image, wait_state
from tests.clc.ec2_helpers import aws, aws_error, client, code, stop_clean
from tests.ebs.test_guest import tgt_targets
from tests.ebs.test_snapshots import storage, volume_file, wait_snapshot
from tests.harness import Cloud
from tests.waiting import wait_for

MIB = 1 << 20
MARK = b"koala ebs root " * 100


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    instance = Cloud(
        tmp_path_factory.mktemp("ebs-instances") / "cloud",
        extra={
            "clc": {"KOALA_EBS_POLL_SECONDS": 1, "KOALA_CC_POLL_SECONDS": 1},
            "cc": {"KOALA_EBS_CAPACITY_GB": 200, "KOALA_EBS_RECONCILE_SECONDS": 1},
        },
    )
    try:
        instance.start()
        yield instance
    finally:
        stop_clean(instance)


@pytest.fixture(scope="module")
def root_snapshot(cloud, alice) -> str:
    """A snapshot of a 1 GiB volume holding a mark at its start and 1 MiB of random data at 300 MiB."""
    ec2 = client(cloud, alice)
    volume = ec2.create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
    with volume_file(cloud, volume).open("r+b") as file:
        file.write(MARK)
        file.seek(300 * MIB)
        file.write(os.urandom(MIB))
    snapshot = ec2.create_snapshot(VolumeId=volume, Description="root")["SnapshotId"]
    wait_snapshot(ec2, snapshot)
    ec2.delete_volume(VolumeId=volume)
    return snapshot


@pytest.fixture(scope="module")
def ebs_image(cloud, alice, root_snapshot) -> str:
    ec2 = client(cloud, alice)
    return ec2.register_image(
        Name="ebs-root",
        Description="boots from a volume",
        RootDeviceName="/dev/sda1",
        BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": root_snapshot, "VolumeSize": 2}}],
    )["ImageId"]


def _instance(ec2, instance_id: str) -> dict:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def _volumes(ec2, instance_id: str) -> dict[str, dict]:
    found = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [instance_id]}])["Volumes"]
    return {v["Attachments"][0]["Device"]: v for v in found}


def _exported(cloud: Cloud, volume_id: str) -> bool:
    return f"zone1.{volume_id}" in tgt_targets(cloud)


def _initiators(cloud: Cloud, volume_id: str) -> list[str]:
    """The initiator names the volume's export admits (one per run of its instance)."""
    targets = parse_show(tgt_targets(cloud)).values()
    return next((t.acl for t in targets if t.iqn.endswith(f"zone1.{volume_id}")), [])


def _cc_attachment(cloud: Cloud, volume_id: str):
    return next(v.attachment for v in storage(cloud).volumes if v.volume_id == volume_id)


def test_register_describe_ebs_image(cloud, alice, root_snapshot, ebs_image):
    ec2 = client(cloud, alice)
    image = ec2.describe_images(ImageIds=[ebs_image])["Images"][0]
    assert image["RootDeviceType"] == "ebs" and image["RootDeviceName"] == "/dev/sda1"
    assert image["State"] == "available" and image["ImageLocation"] == f"{alice.account_id}/ebs-root"
    assert image["BlockDeviceMappings"] == [{
        "DeviceName": "/dev/sda1",
        "Ebs": {"SnapshotId": root_snapshot, "VolumeSize": 2, "DeleteOnTermination": True, "VolumeType": "standard"},
    }]  # fmt: skip
    by_type = ec2.describe_images(Filters=[{"Name": "root-device-type", "Values": ["ebs"]}])["Images"]
    assert [i["ImageId"] for i in by_type] == [ebs_image]
    by_snapshot = aws(cloud, alice, "describe-images", "--filters",
                      f"Name=block-device-mapping.snapshot-id,Values={root_snapshot}")["Images"]  # fmt: skip
    assert [i["ImageId"] for i in by_snapshot] == [ebs_image]
    attribute = ec2.describe_image_attribute(ImageId=ebs_image, Attribute="blockDeviceMapping")
    assert attribute["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"] == root_snapshot
    with pytest.raises(ClientError) as err:  # the image needs it
        ec2.delete_snapshot(SnapshotId=root_snapshot)
    assert code(err) == "InvalidSnapshot.InUse"


def test_run_stop_start_create_image_terminate(cloud, alice, root_snapshot, ebs_image):
    ec2 = client(cloud, alice)
    run = ec2.run_instances(
        ImageId=ebs_image, MinCount=1, MaxCount=1, InstanceType="m1.small",
        BlockDeviceMappings=[{"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 1, "DeleteOnTermination": False}}],
    )["Instances"][0]  # fmt: skip
    instance_id = run["InstanceId"]
    assert run["RootDeviceType"] == "ebs" and run["RootDeviceName"] == "/dev/sda1"
    wait_state(ec2, [instance_id], {"running"})
    described = _instance(ec2, instance_id)
    mappings = {m["DeviceName"]: m["Ebs"] for m in described["BlockDeviceMappings"]}
    assert set(mappings) == {"/dev/sda1", "/dev/sdf"}
    assert mappings["/dev/sda1"]["DeleteOnTermination"] is True and mappings["/dev/sdf"]["DeleteOnTermination"] is False
    volumes = _volumes(ec2, instance_id)
    root, extra = volumes["/dev/sda1"], volumes["/dev/sdf"]
    assert root["VolumeId"] == mappings["/dev/sda1"]["VolumeId"] and root["SnapshotId"] == root_snapshot
    assert root["Size"] == 2 and root["State"] == "in-use" and root["Attachments"][0]["State"] == "attached"
    assert extra["Size"] == 1 and extra["SnapshotId"] == ""
    with volume_file(cloud, root["VolumeId"]).open("rb") as file:
        assert file.read(len(MARK)) == MARK  # made from the snapshot
    for volume in (root, extra):  # exported to the instance's node, for its initiator only
        attachment = _cc_attachment(cloud, volume["VolumeId"])
        assert attachment is not None and attachment.state == "attached" and attachment.instance_id == instance_id
        assert _exported(cloud, volume["VolumeId"])
    with pytest.raises(ClientError) as err:
        ec2.detach_volume(VolumeId=root["VolumeId"])
    assert code(err) == "OperationNotPermitted"

    stopping = ec2.stop_instances(InstanceIds=[instance_id])["StoppingInstances"][0]
    assert stopping["PreviousState"]["Name"] == "running" and stopping["CurrentState"]["Name"] == "stopping"
    wait_state(ec2, [instance_id], {"stopped"})
    assert _volumes(ec2, instance_id)["/dev/sda1"]["State"] == "in-use"  # the volumes stay with it
    wait_for(lambda: not _exported(cloud, root["VolumeId"]), 30, 0.3, "the export gone with the run")
    with volume_file(cloud, root["VolumeId"]).open("r+b") as file:  # "the guest wrote" while it ran
        file.seek(100 * MIB)
        file.write(b"written before the stop")

    started = aws(cloud, alice, "start-instances", "--instance-ids", instance_id)["StartingInstances"][0]
    assert started["PreviousState"]["Name"] == "stopped" and started["CurrentState"]["Name"] == "pending"
    wait_state(ec2, [instance_id], {"running"})
    wait_for(lambda: _exported(cloud, root["VolumeId"]) and _exported(cloud, extra["VolumeId"]), 30, 0.3,
             "the exports back for the new run")  # fmt: skip

    # CreateImage without NoReboot: EC2 shuts the instance down for the snapshots and boots it again. Its run ends
    # (stopping, stopped) and a new one starts (a new attachment, so a new initiator in the export's ACL); the CLC
    # killed meanwhile resumes the reboot from the image's record.
    initiator = _initiators(cloud, root["VolumeId"])
    assert len(initiator) == 1
    image_id = ec2.create_image(InstanceId=instance_id, Name="ebs-copy", Description="made by CreateImage")["ImageId"]
    assert _instance(ec2, instance_id)["State"]["Name"] in ("stopping", "stopped")
    cloud.kill("clc")
    cloud.start("clc")
    image = wait_for(lambda: (i := ec2.describe_images(ImageIds=[image_id])["Images"][0])["State"] == "available"
                     and i, 120, 0.3, "the new image")  # fmt: skip
    wait_state(ec2, [instance_id], {"running"})
    wait_for(lambda: _initiators(cloud, root["VolumeId"]) not in ([], initiator), 30, 0.3, "exported to a new run")
    # NoReboot: the instance keeps running, on the same run.
    quick = ec2.create_image(InstanceId=instance_id, Name="ebs-quick", NoReboot=True)["ImageId"]
    assert _instance(ec2, instance_id)["State"]["Name"] == "running"
    wait_for(lambda: ec2.describe_images(ImageIds=[quick])["Images"][0]["State"] == "available", 120, 0.3,
             "the NoReboot image")  # fmt: skip
    assert _instance(ec2, instance_id)["State"]["Name"] == "running"
    assert _initiators(cloud, root["VolumeId"]) not in ([], initiator)  # still the run after the reboot
    quick_snapshots = [m["Ebs"]["SnapshotId"] for m in ec2.describe_images(ImageIds=[quick])["Images"][0]
                       ["BlockDeviceMappings"]]  # fmt: skip
    ec2.deregister_image(ImageId=quick)
    for snapshot_id in quick_snapshots:
        ec2.delete_snapshot(SnapshotId=snapshot_id)
    assert image["RootDeviceType"] == "ebs"
    copied = {m["DeviceName"]: m["Ebs"] for m in image["BlockDeviceMappings"]}
    assert set(copied) == {"/dev/sda1", "/dev/sdf"} and copied["/dev/sda1"]["VolumeSize"] == 2
    assert copied["/dev/sda1"]["SnapshotId"] != root_snapshot

    second = ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, InstanceType="m1.small")["Instances"][0]
    wait_state(ec2, [second["InstanceId"]], {"running"})
    second_root = _volumes(ec2, second["InstanceId"])["/dev/sda1"]
    assert second_root["SnapshotId"] == copied["/dev/sda1"]["SnapshotId"]
    with volume_file(cloud, second_root["VolumeId"]).open("rb") as file:
        assert file.read(len(MARK)) == MARK
        file.seek(100 * MIB)
        assert file.read(23) == b"written before the stop"

    ec2.terminate_instances(InstanceIds=[instance_id, second["InstanceId"]])
    wait_state(ec2, [instance_id, second["InstanceId"]], {"terminated"})

    # DeleteOnTermination: the roots go, /dev/sdf stays (the second instance's copy of it was DeleteOnTermination
    # false too, as on the instance it was made from).
    states = wait_for(lambda: _settled(ec2, {root["VolumeId"], second_root["VolumeId"]}), 60, 0.3, "volumes settled")
    assert states[extra["VolumeId"]] == "available"
    for volume_id, state in states.items():
        assert state == "available", (volume_id, state)
        ec2.delete_volume(VolumeId=volume_id)
    ec2.deregister_image(ImageId=image_id)
    for snapshot in copied.values():
        ec2.delete_snapshot(SnapshotId=snapshot["SnapshotId"])


def _settled(ec2, deleted: set[str]) -> dict[str, str] | None:
    states = {v["VolumeId"]: v["State"] for v in ec2.describe_volumes()["Volumes"]}
    if deleted & set(states) or any(s != "available" for s in states.values()):
        return None
    return states


def test_stop_start_survive_kill_of_cc_and_clc(cloud, alice, ebs_image):
    """Stop asked while the CC is dead stays `stopping` and ends `stopped` when it is back; the CLC killed while an
    instance is stopping or starting finishes it after its restart; no export outlives a run."""
    ec2 = client(cloud, alice)
    instance_id = ec2.run_instances(ImageId=ebs_image, MinCount=1, MaxCount=1, InstanceType="m1.small")["Instances"][0][
        "InstanceId"
    ]
    wait_state(ec2, [instance_id], {"running"})
    root = _volumes(ec2, instance_id)["/dev/sda1"]["VolumeId"]

    cloud.kill("cc")
    try:
        assert ec2.stop_instances(InstanceIds=[instance_id])["StoppingInstances"][0]["CurrentState"]["Name"] == (
            "stopping"
        )
        cloud.kill("clc")  # and the CLC, with `stopping` written
        cloud.start("clc")
        assert _instance(ec2, instance_id)["State"]["Name"] == "stopping"
    finally:
        cloud.start("cc")
    wait_state(ec2, [instance_id], {"stopped"}, timeout=60)
    wait_for(lambda: not _exported(cloud, root), 30, 0.3, "the export gone")

    cloud.kill("cc")
    try:
        assert ec2.start_instances(InstanceIds=[instance_id])["StartingInstances"][0]["CurrentState"]["Name"] == (
            "pending"
        )
        cloud.kill("clc")
        cloud.start("clc")
    finally:
        cloud.start("cc")
    wait_state(ec2, [instance_id], {"running"}, timeout=60)
    wait_for(lambda: _exported(cloud, root), 30, 0.3, "the export back")
    ec2.terminate_instances(InstanceIds=[instance_id])
    wait_state(ec2, [instance_id], {"terminated"}, timeout=60)
    wait_for(lambda: root not in {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}, 60, 0.3, "root gone")
    wait_for(lambda: not _exported(cloud, root), 30, 0.3, "no export left")


def test_bad_input(cloud, alice, bob, root_snapshot, ebs_image, tmp_path):
    ec2 = client(cloud, alice)
    root_only = [{"DeviceName": "/dev/sdb", "Ebs": {"SnapshotId": root_snapshot}}]
    zero = [{"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": root_snapshot, "VolumeSize": 0}}]
    sizeless = [{"DeviceName": "/dev/sdg", "Ebs": {"DeleteOnTermination": True}}]
    cases = [
        (lambda: ec2.register_image(Name="no-root", RootDeviceName="/dev/sda1", BlockDeviceMappings=root_only),
         "InvalidParameterValue"),
        (lambda: ec2.register_image(Name="small", BlockDeviceMappings=zero), "InvalidParameterValue"),
        (lambda: ec2.register_image(Name="bad-device", BlockDeviceMappings=[
            {"DeviceName": "sda1;rm", "Ebs": {"SnapshotId": root_snapshot}}]), "InvalidParameterValue"),
        (lambda: ec2.register_image(Name="missing-snap", BlockDeviceMappings=[
            {"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": "snap-12345678"}}]), "InvalidSnapshot.NotFound"),
        (lambda: ec2.run_instances(ImageId=ebs_image, MinCount=1, MaxCount=1,
                                   BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "NoDevice": ""}]),
         "InvalidParameterValue"),
        (lambda: ec2.run_instances(ImageId=ebs_image, MinCount=1, MaxCount=1,
                                   BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 5000}}]),
         "InvalidParameterValue"),
        (lambda: ec2.run_instances(ImageId=ebs_image, MinCount=1, MaxCount=1,
                                   BlockDeviceMappings=sizeless), "MissingParameter"),
        (lambda: ec2.create_image(InstanceId="i-12345678", Name="nothing"), "InvalidInstanceID.NotFound"),
    ]  # fmt: skip
    for number, (call, expected) in enumerate(cases):
        with pytest.raises(ClientError) as err:
            call()
        assert code(err) == expected, (number, expected, err.value.response["Error"])
    # Another account's snapshot is not its to register; the image is not another account's to launch.
    with pytest.raises(ClientError) as err:
        client(cloud, bob).register_image(Name="theirs", BlockDeviceMappings=[
            {"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": root_snapshot}}])  # fmt: skip
    assert code(err) == "InvalidSnapshot.NotFound"
    with pytest.raises(ClientError) as err:
        client(cloud, bob).run_instances(ImageId=ebs_image, MinCount=1, MaxCount=1)
    assert code(err) == "InvalidAMIID.NotFound"

    # An instance-store instance cannot stop, start or be imaged.
    store_image = registered_image(cloud, alice, tmp_path, "store-img", "ebs-bad-input", "store-image")
    instance_id = ec2.run_instances(ImageId=store_image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    wait_state(ec2, [instance_id], {"running"})
    assert "UnsupportedOperation" in aws_error(cloud, alice, "stop-instances", "--instance-ids", instance_id)
    for call, expected in (
        (lambda: ec2.start_instances(InstanceIds=[instance_id]), "UnsupportedOperation"),
        (lambda: ec2.create_image(InstanceId=instance_id, Name="from-store"), "InvalidParameterValue"),
        (lambda: ec2.run_instances(ImageId=store_image, MinCount=1, MaxCount=1,
                                   InstanceInitiatedShutdownBehavior="stop"), "UnsupportedOperation"),
    ):  # fmt: skip
        with pytest.raises(ClientError) as err:
            call()
        assert code(err) == expected
    ec2.terminate_instances(InstanceIds=[instance_id])
    wait_state(ec2, [instance_id], {"terminated"})
    with pytest.raises(ClientError) as err:
        ec2.stop_instances(InstanceIds=[instance_id])
    assert code(err) in ("UnsupportedOperation", "IncorrectInstanceState")
