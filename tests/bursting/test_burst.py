"""Cloud bursting end to end between two real Koala clouds: a launch that does not fit the local zone runs in the
remote cloud (key pair imported under a per-cloud name, user data, the group's rules on a remote group, tags with
the local ids); it is described with the remote's public address, its console read, rebooted and terminated
through the local API; everything made remotely is deleted when it ends; the admin's policy decides who bursts."""

from __future__ import annotations

import base64

import pytest
from botocore.exceptions import ClientError

from tests.bursting.support import BURST_ZONE
from tests.clc.compute_cloud import run_when_room, wait_state
from tests.clc.ec2_helpers import code
from tests.waiting import wait_for

USER_DATA = "#!/bin/sh\necho burst\n"


def test_a_launch_that_does_not_fit_bursts_into_the_remote_cloud(world):
    ec2, remote = world.local_ec2(), world.remote_ec2()
    world.wait_zone("zone1")
    world.wait_zone(BURST_ZONE)
    key = ec2.create_key_pair(KeyName="burstkey")
    ec2.create_security_group(GroupName="web", Description="web servers")
    ec2.authorize_security_group_ingress(GroupName="web", IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="0.0.0.0/0")
    ec2.create_security_group(GroupName="ops", Description="operators")
    ec2.authorize_security_group_ingress(
        GroupName="ops", IpProtocol="tcp", FromPort=9100, ToPort=9100, CidrIp="192.168.0.0/16"
    )

    first = run_when_room(ec2, ImageId=world.local_image, MinCount=1, MaxCount=1, InstanceType="m1.small")
    local_id = first["Instances"][0]["InstanceId"]
    assert first["Instances"][0]["Placement"]["AvailabilityZone"] == "zone1"
    wait_state(ec2, [local_id], {"running"})

    answer = ec2.run_instances(
        ImageId=world.local_image,
        MinCount=1,
        MaxCount=1,
        InstanceType="m1.small",
        KeyName="burstkey",
        SecurityGroups=["web", "ops"],
        UserData=USER_DATA,
    )
    burst = answer["Instances"][0]
    burst_id = burst["InstanceId"]
    assert burst["Placement"]["AvailabilityZone"] == BURST_ZONE
    running = wait_state(ec2, [burst_id], {"running"})[burst_id]

    # The remote cloud runs exactly one instance for it, tagged with the local ids, from the mapped image.
    remote_side = [i for i in world.remote_instances() if i["LocalTags"]["koala-instance"] == burst_id]
    assert len(remote_side) == 1
    theirs = remote_side[0]
    assert theirs["ImageId"] == world.remote_image and theirs["InstanceType"] == "m1.small"
    assert theirs["LocalTags"]["koala-reservation"] == answer["ReservationId"]
    assert theirs["LocalTags"]["koala-owner"] == world.local_creds.account_id
    # Its public address is the remote's, shown by the local API.
    assert theirs["PublicIpAddress"] and running["PublicIpAddress"] == theirs["PublicIpAddress"]

    # The key pair was imported remotely under a per-cloud name with the same public key.
    remote_key = theirs["KeyName"]
    assert remote_key.startswith("koala-") and remote_key != "burstkey"
    local_fingerprint = ec2.describe_key_pairs(KeyNames=["burstkey"])["KeyPairs"][0]["KeyFingerprint"]
    assert key["KeyFingerprint"] == local_fingerprint
    assert remote.describe_key_pairs(KeyNames=[remote_key])["KeyPairs"]
    # User data reached the remote instance as given.
    attribute = remote.describe_instance_attribute(InstanceId=theirs["InstanceId"], Attribute="userData")
    assert base64.b64decode(attribute["UserData"]["Value"]).decode() == USER_DATA

    # Each local group's rules are on a remote group of its own, and the instance is in both.
    def remote_rules(name: str) -> set[tuple]:
        group = remote.describe_security_groups(GroupNames=[name])["SecurityGroups"][0]
        return {
            (p["IpProtocol"], p.get("FromPort"), p.get("ToPort"), r["CidrIp"])
            for p in group["IpPermissions"]
            for r in p.get("IpRanges", [])
        }

    remote_groups = sorted(g["GroupName"] for g in theirs["SecurityGroups"])
    assert len(remote_groups) == 2 and all(g.startswith("koala-") for g in remote_groups)
    ops_name, group_name = remote_groups  # "...-ops" sorts before "...-web"
    assert group_name.endswith("-web") and ops_name.endswith("-ops")
    assert ("tcp", 22, 22, "0.0.0.0/0") in remote_rules(group_name)
    assert remote_rules(ops_name) == {("tcp", 9100, 9100, "192.168.0.0/16")}
    # A rule revoked from the second group leaves its remote group too.
    ec2.revoke_security_group_ingress(
        GroupName="ops", IpProtocol="tcp", FromPort=9100, ToPort=9100, CidrIp="192.168.0.0/16"
    )
    wait_for(lambda: not remote_rules(ops_name), what="the revoked rule gone from the remote group of ops")
    # A rule added locally reaches the remote group.
    ec2.authorize_security_group_ingress(GroupName="web", IpProtocol="tcp", FromPort=80, ToPort=80, CidrIp="10.0.0.0/8")

    def has_http():
        found = remote.describe_security_groups(GroupNames=[group_name])["SecurityGroups"][0]["IpPermissions"]
        return any(p.get("FromPort") == 80 and p.get("IpRanges", [{}])[0].get("CidrIp") == "10.0.0.0/8" for p in found)

    wait_for(has_http, what="the new rule on the remote group")

    # Console and reboot through the local API reach the remote instance.
    console = ec2.get_console_output(InstanceId=burst_id)
    assert console["InstanceId"] == burst_id
    assert console.get("Output") == remote.get_console_output(InstanceId=theirs["InstanceId"]).get("Output")
    ec2.reboot_instances(InstanceIds=[burst_id])
    wait_for(
        lambda: any(
            b"Action=RebootInstances" in body and theirs["InstanceId"].encode() in body
            for body in world.proxy.forwarded
        ),
        what="RebootInstances of the remote instance sent to the remote",
    )

    # Terminate: the remote instance goes, then the key pair and group made for it.
    ec2.terminate_instances(InstanceIds=[burst_id, local_id])
    wait_state(ec2, [burst_id, local_id], {"terminated"})
    wait_for(lambda: not world.remote_instances(), what="no live remote instance")
    wait_for(
        lambda: not [k for k in remote.describe_key_pairs()["KeyPairs"] if k["KeyName"].startswith("koala-")],
        what="the imported key pair deleted",
    )
    wait_for(
        lambda: (
            not [g for g in remote.describe_security_groups()["SecurityGroups"] if g["GroupName"].startswith("koala-")]
        ),
        what="the remote group deleted",
    )
    assert world.remote_creds.secret_key not in world.cc.log()  # the remote's secret never reaches a log


def test_policy_decides_who_bursts_and_users_may_name_the_remote_zone(world):
    ec2 = world.local_ec2()
    world.wait_zone(BURST_ZONE)
    # m1.large (2 cores) never fits zone1, and the admin allowed bursting for m1.small only.
    with pytest.raises(ClientError) as refused:
        ec2.run_instances(ImageId=world.local_image, MinCount=1, MaxCount=1, InstanceType="m1.large")
    assert code(refused) == "InsufficientInstanceCapacity"
    assert not world.remote_instances()
    # Naming the remote zone is the user's own choice.
    named = ec2.run_instances(
        ImageId=world.local_image,
        MinCount=1,
        MaxCount=1,
        InstanceType="m1.large",
        Placement={"AvailabilityZone": BURST_ZONE},
    )["Instances"][0]
    assert named["Placement"]["AvailabilityZone"] == BURST_ZONE
    wait_state(ec2, [named["InstanceId"]], {"running"})
    assert [i["InstanceType"] for i in world.remote_instances()] == ["m1.large"]
    ec2.terminate_instances(InstanceIds=[named["InstanceId"]])
    wait_state(ec2, [named["InstanceId"]], {"terminated"})
    wait_for(lambda: not world.remote_instances(), what="no live remote instance")


def test_an_image_with_no_map_entry_is_refused_at_launch_with_the_reason(world, tmp_path):
    from tests.bursting.support import register_image

    unmapped = register_image(world.local, tmp_path / "bundle", "unmapped-img")
    ec2 = world.local_ec2()
    with pytest.raises(ClientError) as refused:
        ec2.run_instances(ImageId=unmapped, MinCount=1, MaxCount=1, Placement={"AvailabilityZone": BURST_ZONE})
    assert code(refused) == "InvalidAMIID.NotFound"
    assert "KOALA_REMOTE_IMAGE_MAP" in str(refused.value) and unmapped in str(refused.value)
    assert not world.remote_instances()
