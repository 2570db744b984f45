"""ModifyInstanceAttribute / ResetInstanceAttribute, GetPasswordData, ConfirmProductInstance and image product
codes against real CLC, Walrus, CC and NC (libvirt's test driver) processes, through boto3, awscli and SigV2 as
ec2-api-tools send it: the attributes' effects, EC2's error codes for every bad input, and the attributes kept
across a kill -9 of the CLC."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from tests.clc.compute_cloud import (
    registered_image,
    run_when_room,
    start_cloud,
    wait_state,
)
from tests.clc.ec2_helpers import aws, client, ec2_url, sigv2, stop_clean

NS = "{http://ec2.amazonaws.com/doc/2013-02-01/}"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, clc_database):
    instance = start_cloud(tmp_path_factory.mktemp("attributes") / "cloud", database_url=clc_database)
    try:
        yield instance
    finally:
        stop_clean(instance)


@pytest.fixture(scope="module")
def image(cloud, alice, tmp_path_factory):
    return registered_image(cloud, alice, tmp_path_factory.mktemp("bundle"), "attrs", "img.attrs", "attrs")


@pytest.fixture(scope="module")
def running(cloud, alice, image):
    ec2 = client(cloud, alice)
    instance_id = run_when_room(ec2, ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    wait_state(ec2, [instance_id], {"running"})
    return instance_id


def code_of(call, **kwargs) -> str:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    return caught.value.response["Error"]["Code"]


def attribute(ec2, instance_id: str, name: str):
    answer = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute=name)
    key = name[0].upper() + name[1:]
    return answer[key]["Value"]


def test_disable_api_termination(cloud, alice, running):
    ec2 = client(cloud, alice)
    assert attribute(ec2, running, "disableApiTermination") is False
    ec2.modify_instance_attribute(InstanceId=running, DisableApiTermination={"Value": True})
    assert attribute(ec2, running, "disableApiTermination") is True
    with pytest.raises(ClientError) as caught:
        ec2.terminate_instances(InstanceIds=[running])
    assert caught.value.response["Error"]["Code"] == "OperationNotPermitted"
    assert "disableApiTermination" in caught.value.response["Error"]["Message"]
    assert wait_state(ec2, [running], {"running"})[running]["State"]["Name"] == "running"
    ec2.reset_instance_attribute(InstanceId=running, Attribute="disableApiTermination")
    assert attribute(ec2, running, "disableApiTermination") is False
    # awscli, both ways
    aws(cloud, alice, "modify-instance-attribute", "--instance-id", running, "--disable-api-termination")
    assert attribute(ec2, running, "disableApiTermination") is True
    aws(cloud, alice, "modify-instance-attribute", "--instance-id", running, "--no-disable-api-termination")
    assert attribute(ec2, running, "disableApiTermination") is False
    # the old Attribute/Value form, signed as ec2-api-tools sign
    old = {"Action": "ModifyInstanceAttribute", "Version": "2013-02-01", "InstanceId": running}
    reply = sigv2(ec2_url(cloud), {**old, "Attribute": "disableApiTermination", "Value": "true"}, alice)
    assert reply.status == 200, reply.body
    assert reply.xml.findtext(f"{NS}return") == "true"
    assert attribute(ec2, running, "disableApiTermination") is True
    reply = sigv2(ec2_url(cloud), {**old, "DisableApiTermination.Value": "false"}, alice)
    assert reply.status == 200, reply.body
    assert attribute(ec2, running, "disableApiTermination") is False


def test_protected_at_launch_and_kept_across_a_crash(cloud, alice, image):
    ec2 = client(cloud, alice)
    protected = run_when_room(ec2, ImageId=image, MinCount=1, MaxCount=1, DisableApiTermination=True)
    instance_id = protected["Instances"][0]["InstanceId"]
    wait_state(ec2, [instance_id], {"running"})
    assert code_of(ec2.terminate_instances, InstanceIds=[instance_id]) == "OperationNotPermitted"
    cloud.kill("clc")
    cloud.start("clc")
    ec2 = client(cloud, alice)
    assert attribute(ec2, instance_id, "disableApiTermination") is True
    assert code_of(ec2.terminate_instances, InstanceIds=[instance_id]) == "OperationNotPermitted"
    ec2.modify_instance_attribute(InstanceId=instance_id, Attribute="disableApiTermination", Value="false")
    ec2.terminate_instances(InstanceIds=[instance_id])
    wait_state(ec2, [instance_id], {"terminated"})
    # a terminated instance's attributes no longer change
    assert code_of(ec2.modify_instance_attribute, InstanceId=instance_id, DisableApiTermination={"Value": True}) == (
        "IncorrectInstanceState"
    )


def test_shutdown_behavior(cloud, alice, image, running):
    ec2 = client(cloud, alice)
    assert attribute(ec2, running, "instanceInitiatedShutdownBehavior") == "terminate"
    ec2.modify_instance_attribute(InstanceId=running, InstanceInitiatedShutdownBehavior={"Value": "terminate"})
    assert (
        code_of(ec2.modify_instance_attribute, InstanceId=running, InstanceInitiatedShutdownBehavior={"Value": "stop"})
        == "UnsupportedOperation"
    )
    assert (
        code_of(ec2.modify_instance_attribute, InstanceId=running, InstanceInitiatedShutdownBehavior={"Value": "halt"})
        == "InvalidParameterValue"
    )
    ec2.reset_instance_attribute(InstanceId=running, Attribute="instanceInitiatedShutdownBehavior")
    assert attribute(ec2, running, "instanceInitiatedShutdownBehavior") == "terminate"
    assert (
        code_of(ec2.run_instances, ImageId=image, MinCount=1, MaxCount=1, InstanceInitiatedShutdownBehavior="stop")
        == "UnsupportedOperation"
    )


@pytest.mark.parametrize(
    "change",
    [
        {"InstanceType": {"Value": "c1.medium"}},
        {"UserData": {"Value": b"#!/bin/sh\n"}},
        {"Kernel": {"Value": "eki-12345678"}},
        {"Ramdisk": {"Value": "eri-12345678"}},
        {"Attribute": "instanceType", "Value": "m1.large"},
    ],
)
def test_stopped_only_attributes_refused_while_running(cloud, alice, running, change):
    ec2 = client(cloud, alice)
    assert code_of(ec2.modify_instance_attribute, InstanceId=running, **change) == "IncorrectInstanceState"
    assert attribute(ec2, running, "instanceType") == "m1.small"


def test_bad_input(cloud, alice, bob, running):
    ec2, other = client(cloud, alice), client(cloud, bob)
    modify = ec2.modify_instance_attribute
    both = {"DisableApiTermination": {"Value": True}, "InstanceType": {"Value": "m1.small"}}
    assert code_of(modify, InstanceId=running, **both) == "InvalidParameterCombination"
    assert code_of(modify, InstanceId=running) == "MissingParameter"
    assert code_of(modify, InstanceId=running, SourceDestCheck={"Value": False}) == "InvalidParameterValue"
    assert code_of(modify, InstanceId=running, Groups=["sg-12345678"]) == "InvalidParameterValue"
    assert code_of(modify, InstanceId=running, Attribute="bogus", Value="1") == "InvalidParameterValue"
    assert code_of(modify, InstanceId=running, Attribute="disableApiTermination") == "MissingParameter"
    assert code_of(modify, InstanceId=running, Attribute="disableApiTermination", Value="maybe") == (
        "InvalidParameterValue"
    )
    assert code_of(modify, InstanceId="i-zz", DisableApiTermination={"Value": True}) == "InvalidInstanceID.Malformed"
    assert code_of(modify, InstanceId="i-12345678", DisableApiTermination={"Value": True}) == (
        "InvalidInstanceID.NotFound"
    )
    assert code_of(other.modify_instance_attribute, InstanceId=running, DisableApiTermination={"Value": True}) == (
        "InvalidInstanceID.NotFound"
    )
    assert code_of(modify, InstanceId=running, Attribute="userData", Value="not base64!") == "InvalidParameterValue"
    assert code_of(modify, InstanceId=running, Attribute="userData", Value="A" * 70000) == "InvalidParameterValue"
    reset = ec2.reset_instance_attribute
    assert code_of(reset, InstanceId=running, Attribute="bogus") == "InvalidParameterValue"
    assert code_of(reset, InstanceId=running, Attribute="instanceType") == "InvalidParameterValue"
    assert code_of(reset, InstanceId=running, Attribute="kernel") == "IncorrectInstanceState"
    assert code_of(reset, InstanceId="i-zz", Attribute="kernel") == "InvalidInstanceID.Malformed"
    assert attribute(ec2, running, "disableApiTermination") is False  # nothing above changed it


def test_get_password_data(cloud, alice, bob, running):
    ec2 = client(cloud, alice)
    answer = ec2.get_password_data(InstanceId=running)
    assert answer["InstanceId"] == running and answer["PasswordData"] == ""
    params = {"Action": "GetPasswordData", "Version": "2013-02-01", "InstanceId": running}
    reply = sigv2(ec2_url(cloud), params, alice)
    assert reply.status == 200
    assert reply.xml.find(f"{NS}passwordData") is not None  # the element, empty
    assert aws(cloud, alice, "get-password-data", "--instance-id", running)["PasswordData"] == ""
    assert code_of(ec2.get_password_data, InstanceId="i-zz") == "InvalidInstanceID.Malformed"
    assert code_of(client(cloud, bob).get_password_data, InstanceId=running) == "InvalidInstanceID.NotFound"


def test_product_codes(cloud, alice, bob, image, running):
    ec2, other = client(cloud, alice), client(cloud, bob)
    ec2.modify_image_attribute(ImageId=image, ProductCodes=["ABCD1234"])
    codes = [{"ProductCodeId": "ABCD1234", "ProductCodeType": "devpay"}]
    assert ec2.describe_images(ImageIds=[image])["Images"][0]["ProductCodes"] == codes
    assert ec2.describe_image_attribute(ImageId=image, Attribute="productCodes")["ProductCodes"] == codes
    assert code_of(ec2.modify_image_attribute, ImageId=image, ProductCodes=["no way!"]) == "InvalidParameterValue"
    # the owner lets bob launch it; bob's instance carries the code; the code's owner confirms bob's instance
    ec2.modify_image_attribute(ImageId=image, LaunchPermission={"Add": [{"UserId": bob.account_id}]})
    launched = run_when_room(other, ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]
    assert launched["ProductCodes"] == [{"ProductCodeId": "ABCD1234", "ProductCodeType": "devpay"}]
    bobs = launched["InstanceId"]
    wait_state(other, [bobs], {"running"})
    confirmed = ec2.confirm_product_instance(InstanceId=bobs, ProductCode="ABCD1234")
    assert confirmed == {"Return": True, "OwnerId": bob.account_id, "ResponseMetadata": confirmed["ResponseMetadata"]}
    # a code alice does not own, on an instance that is not hers: as if the instance did not exist
    assert code_of(ec2.confirm_product_instance, InstanceId=bobs, ProductCode="OTHER123") == (
        "InvalidInstanceID.NotFound"
    )
    assert ec2.confirm_product_instance(InstanceId=running, ProductCode="OTHER123")["Return"] is False
    # bob does not own the code: he learns nothing more than his own instance's codes show
    assert other.confirm_product_instance(InstanceId=bobs, ProductCode="ABCD1234")["Return"] is False
    assert (
        code_of(other.confirm_product_instance, InstanceId="i-12345678", ProductCode="ABCD1234")
        == "InvalidInstanceID.NotFound"
    )
    assert code_of(ec2.confirm_product_instance, InstanceId="i-zz", ProductCode="ABCD1234") == (
        "InvalidInstanceID.Malformed"
    )
    assert code_of(ec2.confirm_product_instance, InstanceId=bobs, ProductCode="#") == "InvalidParameterValue"
    other.terminate_instances(InstanceIds=[bobs])
    wait_state(other, [bobs], {"terminated"})
    assert ec2.confirm_product_instance(InstanceId=bobs, ProductCode="ABCD1234")["Return"] is False
