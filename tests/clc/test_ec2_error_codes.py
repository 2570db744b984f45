"""EC2's own error codes for EC2's failures, against a real CLC process through boto3 and awscli: a malformed id
is `<Kind>.Malformed`, a well-formed unknown one `<Kind>.NotFound`; MaxResults bounds per action as EC2
documents them; an ICMP rule authorized with type/code -1 revoked with the same values; egress calls answered as
EC2-Classic answered them."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from tests.clc.ec2_helpers import aws, client, sigv2, sigv4, start_clc, stop_clean
from tests.clc.ec2_helpers import ec2_url as url_of


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, clc_database):
    instance = start_clc(tmp_path_factory.mktemp("ec2errors") / "cloud", clc_database)
    try:
        yield instance
    finally:
        stop_clean(instance)


@pytest.fixture(scope="module")
def ec2(cloud, alice):
    return client(cloud, alice)


def code_of(call, **kwargs) -> str:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    return caught.value.response["Error"]["Code"]


@pytest.mark.parametrize(
    ("operation", "kwargs", "code"),
    [
        ("describe_instances", {"InstanceIds": ["i-zzzz"]}, "InvalidInstanceID.Malformed"),
        ("describe_instances", {"InstanceIds": ["vol-12345678"]}, "InvalidInstanceID.Malformed"),
        ("describe_instances", {"InstanceIds": ["i-12345678"]}, "InvalidInstanceID.NotFound"),
        ("terminate_instances", {"InstanceIds": ["i-1234"]}, "InvalidInstanceID.Malformed"),
        ("terminate_instances", {"InstanceIds": ["i-12345678"]}, "InvalidInstanceID.NotFound"),
        ("reboot_instances", {"InstanceIds": ["bogus"]}, "InvalidInstanceID.Malformed"),
        ("reboot_instances", {"InstanceIds": ["i-12345678"]}, "InvalidInstanceID.NotFound"),
        ("get_console_output", {"InstanceId": "i-xyz"}, "InvalidInstanceID.Malformed"),
        ("get_console_output", {"InstanceId": "i-12345678"}, "InvalidInstanceID.NotFound"),
        ("describe_instance_status", {"InstanceIds": ["i-"]}, "InvalidInstanceID.Malformed"),
        ("describe_instance_status", {"InstanceIds": ["i-12345678"]}, "InvalidInstanceID.NotFound"),
        (
            "describe_instance_attribute",
            {"InstanceId": "i-zz", "Attribute": "instanceType"},
            "InvalidInstanceID.Malformed",
        ),
        ("describe_images", {"ImageIds": ["emi-zzzz"]}, "InvalidAMIID.Malformed"),
        ("describe_images", {"ImageIds": ["i-12345678"]}, "InvalidAMIID.Malformed"),
        ("describe_images", {"ImageIds": ["emi-12345678"]}, "InvalidAMIID.NotFound"),
        ("deregister_image", {"ImageId": "emi-zz"}, "InvalidAMIID.Malformed"),
        ("deregister_image", {"ImageId": "emi-12345678"}, "InvalidAMIID.NotFound"),
        ("describe_image_attribute", {"ImageId": "x", "Attribute": "description"}, "InvalidAMIID.Malformed"),
        ("run_instances", {"ImageId": "emi-zz", "MinCount": 1, "MaxCount": 1}, "InvalidAMIID.Malformed"),
        ("run_instances", {"ImageId": "emi-12345678", "MinCount": 1, "MaxCount": 1}, "InvalidAMIID.NotFound"),
        ("describe_security_groups", {"GroupIds": ["sg-zz"]}, "InvalidGroupId.Malformed"),
        ("describe_security_groups", {"GroupIds": ["sg-12345678"]}, "InvalidGroup.NotFound"),
        ("delete_security_group", {"GroupId": "sg-zz"}, "InvalidGroupId.Malformed"),
        ("delete_security_group", {"GroupId": "sg-12345678"}, "InvalidGroup.NotFound"),
        (
            "authorize_security_group_ingress",
            {"GroupId": "sg-1", "IpProtocol": "tcp", "FromPort": 1, "ToPort": 1, "CidrIp": "0.0.0.0/0"},
            "InvalidGroupId.Malformed",
        ),
        (
            "run_instances",
            {"ImageId": "emi-12345678", "MinCount": 1, "MaxCount": 1, "SecurityGroupIds": ["sg-zz"]},
            "InvalidGroupId.Malformed",
        ),
        ("create_tags", {"Resources": ["i-zz"], "Tags": [{"Key": "a", "Value": "b"}]}, "InvalidID"),
        (
            "create_tags",
            {"Resources": ["i-12345678"], "Tags": [{"Key": "a", "Value": "b"}]},
            "InvalidInstanceID.NotFound",
        ),
        ("release_address", {"AllocationId": "eipalloc-zz"}, "InvalidAllocationID.Malformed"),
        ("release_address", {"AllocationId": "eipalloc-12345678"}, "InvalidAllocationID.NotFound"),
        ("describe_addresses", {"AllocationIds": ["eipalloc-zz"]}, "InvalidAllocationID.Malformed"),
        ("disassociate_address", {"AssociationId": "eipassoc-zz"}, "InvalidAssociationID.Malformed"),
        ("disassociate_address", {"AssociationId": "eipassoc-12345678"}, "InvalidAssociationID.NotFound"),
        ("associate_address", {"InstanceId": "i-zz", "PublicIp": "10.9.9.9"}, "InvalidInstanceID.Malformed"),
    ],
)
def test_malformed_and_unknown_ids(ec2, operation, kwargs, code):
    assert code_of(getattr(ec2, operation), **kwargs) == code


@pytest.mark.parametrize(
    ("operation", "low", "high", "extra"),
    [
        ("describe_instances", 5, 1000, {}),
        ("describe_instance_status", 5, 1000, {}),
        ("describe_tags", 5, 1000, {}),
        ("describe_security_groups", 5, 1000, {}),
        ("describe_images", 5, 1000, {"Owners": ["self"]}),
        ("describe_instance_types", 5, 100, {}),
    ],
)
def test_max_results_bounds(cloud, ec2, alice, operation, low, high, extra):
    """In-range values work through boto3; out-of-range ones are sent signed by hand, since boto3 refuses some of
    them before sending."""
    call = getattr(ec2, operation)
    for good in (low, high):
        call(MaxResults=good, **extra)
    action = ec2.meta.method_to_api_mapping[operation]
    params = {"Action": action, "Version": "2016-11-15"}
    if extra.get("Owners"):
        params["Owner.1"] = extra["Owners"][0]
    for bad in (low - 1, high + 1, 0, -1):
        reply = sigv4(url_of(cloud), {**params, "MaxResults": str(bad)}, alice)
        assert (reply.status, reply.code) == (400, "InvalidParameterValue"), (bad, reply.body)


def test_paging_images_and_types(ec2):
    types = [t["InstanceType"] for t in ec2.describe_instance_types()["InstanceTypes"]]
    first = ec2.describe_instance_types(MaxResults=5)
    assert [t["InstanceType"] for t in first["InstanceTypes"]] == types[:5]
    if len(types) > 5:
        rest = ec2.describe_instance_types(MaxResults=100, NextToken=first["NextToken"])
        assert [t["InstanceType"] for t in rest["InstanceTypes"]] == types[5:]
    assert code_of(ec2.describe_images, MaxResults=5, NextToken="%%%") == "InvalidNextToken"
    assert code_of(ec2.describe_images, MaxResults=5, ImageIds=["emi-12345678"]) == "InvalidParameterCombination"


def test_max_results_not_with_ids(ec2):
    assert code_of(ec2.describe_instances, InstanceIds=["i-12345678"], MaxResults=5) == "InvalidParameterCombination"


def test_icmp_minus_one_revoked_with_the_same_values(cloud, ec2, alice):
    ec2.create_security_group(GroupName="pingers", Description="icmp")
    everything = [{"IpProtocol": "icmp", "FromPort": -1, "ToPort": -1, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}]
    ec2.authorize_security_group_ingress(GroupName="pingers", IpPermissions=everything)
    rules = ec2.describe_security_groups(GroupNames=["pingers"])["SecurityGroups"][0]["IpPermissions"]
    assert [(r["IpProtocol"], r["FromPort"], r["ToPort"]) for r in rules] == [("icmp", -1, -1)]
    ec2.revoke_security_group_ingress(GroupName="pingers", IpPermissions=everything)
    assert ec2.describe_security_groups(GroupNames=["pingers"])["SecurityGroups"][0]["IpPermissions"] == []
    # awscli's --port -1
    group = ["--group-name", "pingers", "--protocol", "icmp", "--port", "-1", "--cidr", "10.0.0.0/8"]
    aws(cloud, alice, "authorize-security-group-ingress", *group)
    aws(cloud, alice, "revoke-security-group-ingress", *group)
    assert ec2.describe_security_groups(GroupNames=["pingers"])["SecurityGroups"][0]["IpPermissions"] == []
    # ec2-authorize -P icmp -t -1:-1 (the tools' flat IpPermissions with protocol number and -1 strings)
    flat = {
        "GroupName": "pingers",
        "IpPermissions.1.IpProtocol": "icmp",
        "IpPermissions.1.FromPort": "-1",
        "IpPermissions.1.ToPort": "-1",
        "IpPermissions.1.IpRanges.1.CidrIp": "0.0.0.0/0",
        "Version": "2013-02-01",
    }
    assert sigv2(url_of(cloud), {"Action": "AuthorizeSecurityGroupIngress", **flat}, alice).status == 200
    by_number = {**flat, "IpPermissions.1.IpProtocol": "1"}
    assert sigv2(url_of(cloud), {"Action": "RevokeSecurityGroupIngress", **by_number}, alice).status == 200
    assert ec2.describe_security_groups(GroupNames=["pingers"])["SecurityGroups"][0]["IpPermissions"] == []
    # a type with all its codes, and a specific type/code pair, each revoked as given
    for low, high in ((8, -1), (3, 4)):
        rule = [{"IpProtocol": "icmp", "FromPort": low, "ToPort": high, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}]
        ec2.authorize_security_group_ingress(GroupName="pingers", IpPermissions=rule)
        ec2.revoke_security_group_ingress(GroupName="pingers", IpPermissions=rule)
    assert ec2.describe_security_groups(GroupNames=["pingers"])["SecurityGroups"][0]["IpPermissions"] == []
    wrong = [{"IpProtocol": "icmp", "FromPort": 8, "ToPort": 0, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}]
    assert code_of(ec2.revoke_security_group_ingress, GroupName="pingers", IpPermissions=wrong) == (
        "InvalidPermission.NotFound"
    )
    for bad in ((-2, -1), (256, 0), (0, 256)):
        rule = [{"IpProtocol": "icmp", "FromPort": bad[0], "ToPort": bad[1], "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}]
        assert code_of(ec2.authorize_security_group_ingress, GroupName="pingers", IpPermissions=rule) == (
            "InvalidParameterValue"
        )


def test_egress_in_ec2_classic(cloud, ec2, alice):
    group_id = ec2.create_security_group(GroupName="outbound", Description="egress")["GroupId"]
    rule = [{"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
    for call in (ec2.authorize_security_group_egress, ec2.revoke_security_group_egress):
        with pytest.raises(ClientError) as caught:
            call(GroupId=group_id, IpPermissions=rule)
        error = caught.value.response["Error"]
        assert error["Code"] == "InvalidParameterValue"
        assert error["Message"] == "Only Amazon VPC security groups may be used with this operation."
        assert code_of(call, GroupId="sg-12345678", IpPermissions=rule) == "InvalidGroup.NotFound"
        assert code_of(call, GroupId="sg-zz", IpPermissions=rule) == "InvalidGroupId.Malformed"
    assert ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]["IpPermissionsEgress"] == []


def test_other_failure_paths(cloud, ec2):
    """The rest of the actions' documented failures, each with EC2's code."""
    ec2.create_key_pair(KeyName="twice")
    assert code_of(ec2.create_key_pair, KeyName="twice") == "InvalidKeyPair.Duplicate"
    assert code_of(ec2.describe_key_pairs, KeyNames=["nobody"]) == "InvalidKeyPair.NotFound"
    assert code_of(ec2.import_key_pair, KeyName="bad", PublicKeyMaterial=b"not a key") == "InvalidKey.Format"
    ec2.delete_key_pair(KeyName="nobody")  # EC2 answers true for a key pair that is not there
    ec2.create_security_group(GroupName="dup", Description="d")
    assert code_of(ec2.create_security_group, GroupName="dup", Description="d") == "InvalidGroup.Duplicate"
    assert code_of(ec2.delete_security_group, GroupName="nobody") == "InvalidGroup.NotFound"
    assert code_of(ec2.describe_security_groups, GroupNames=["nobody"]) == "InvalidGroup.NotFound"
    assert code_of(ec2.describe_availability_zones, ZoneNames=["atlantis"]) == "InvalidParameterValue"
    assert code_of(ec2.describe_instance_types, InstanceTypes=["m9.huge"]) == "InvalidInstanceType"
    assert code_of(ec2.run_instances, ImageId="emi-12345678", MinCount=2, MaxCount=1) == "InvalidParameterValue"
    assert code_of(ec2.run_instances, ImageId="emi-12345678", MinCount=1, MaxCount=1, KeyName="nobody") == (
        "InvalidKeyPair.NotFound"
    )
    assert code_of(ec2.run_instances, ImageId="emi-12345678", MinCount=1, MaxCount=1, KernelId="eki-zz") in (
        "InvalidAMIID.Malformed",
        "InvalidAMIID.NotFound",  # the image is checked first
    )
    assert code_of(ec2.register_image, ImageLocation="no-such-bucket/x.manifest.xml", Name="nothing") != (
        "InternalError"
    )
    assert code_of(ec2.describe_instance_attribute, InstanceId="i-12345678", Attribute="kernel") == (
        "InvalidInstanceID.NotFound"
    )
