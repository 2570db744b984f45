"""The EC2 protocol layer against botocore itself: what botocore's EC2 serializer sends, params.parse reads back
exactly; what xml.response writes, botocore's EC2 parser reads back exactly (for boto3 and awscli)."""

from __future__ import annotations

import datetime as dt
from urllib.parse import parse_qsl

import pytest
from botocore import parsers, serialize

from services.cloud_controller.ec2 import model, params, xml
from services.cloud_controller.ec2.errors import Ec2Error

REQUESTS = {
    "AuthorizeSecurityGroupIngress": {
        "GroupName": "web",
        "IpPermissions": [
            {
                "IpProtocol": "tcp",
                "FromPort": 22,
                "ToPort": 22,
                "IpRanges": [{"CidrIp": "10.0.0.0/8", "Description": "ssh"}, {"CidrIp": "192.168.0.0/16"}],
                "UserIdGroupPairs": [{"GroupName": "default", "UserId": "123456789012"}],
            },
            {"IpProtocol": "icmp", "FromPort": -1, "ToPort": -1, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        ],
    },
    "RunInstances": {
        "ImageId": "emi-12345678",
        "MinCount": 1,
        "MaxCount": 3,
        "KeyName": "k",
        "SecurityGroups": ["default", "web"],
        "UserData": "aGVsbG8=",
        "InstanceType": "m1.small",
        "Placement": {"AvailabilityZone": "zone1"},
        "ClientToken": "token-1",
        "BlockDeviceMappings": [{"DeviceName": "/dev/sdb", "VirtualName": "ephemeral0"}],
        "TagSpecifications": [{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "x"}]}],
        "DisableApiTermination": False,
    },
    "DescribeInstances": {
        "InstanceIds": ["i-00000001", "i-00000002"],
        "Filters": [
            {"Name": "instance-state-name", "Values": ["running", "pending"]},
            {"Name": "tag:Name", "Values": ["x"]},
        ],
        "MaxResults": 10,
        "NextToken": "abc",
    },
    "CreateTags": {"Resources": ["sg-12345678"], "Tags": [{"Key": "a", "Value": ""}, {"Key": "b", "Value": "c"}]},
    "DeleteTags": {"Resources": ["sg-12345678"], "Tags": [{"Key": "a"}]},
    "ImportKeyPair": {"KeyName": "k", "PublicKeyMaterial": b"ssh-rsa AAAAB3NzaC1yc2E= me"},
    "DescribeImageAttribute": {"ImageId": "emi-12345678", "Attribute": "launchPermission"},
    "ModifyImageAttribute": {
        "ImageId": "emi-12345678",
        "LaunchPermission": {"Add": [{"Group": "all"}, {"UserId": "123456789012"}], "Remove": []},
    },
}


@pytest.mark.parametrize("operation", sorted(REQUESTS))
def test_params_parse_what_botocore_sends(operation):
    op = model.operation(operation)
    body = serialize.EC2Serializer().serialize_to_request(REQUESTS[operation], op)["body"]
    values = {k: str(v) for k, v in body.items()} if isinstance(body, dict) else dict(parse_qsl(body))
    parsed = params.parse(op.input_shape, values)
    expected = dict(REQUESTS[operation])
    if operation == "ModifyImageAttribute":
        expected["LaunchPermission"] = {"Add": expected["LaunchPermission"]["Add"]}  # EC2 drops empty lists
    assert parsed == expected


def test_required_and_types():
    op = model.operation("CreateKeyPair")
    with pytest.raises(Ec2Error) as caught:
        params.parse(op.input_shape, {"Action": "CreateKeyPair"})
    assert caught.value.code == "MissingParameter" and "KeyName" in caught.value.message
    op = model.operation("AuthorizeSecurityGroupIngress")
    with pytest.raises(Ec2Error) as caught:
        params.parse(op.input_shape, {"IpPermissions.1.FromPort": "x"})
    assert caught.value.code == "InvalidParameterValue"
    op = model.operation("DescribeKeyPairs")
    assert params.parse(op.input_shape, {"KeyName": "solo"}) == {"KeyNames": ["solo"]}
    assert params.parse(op.input_shape, {"KeyName.3": "b", "KeyName.1": "a"}) == {"KeyNames": ["a", "b"]}
    with pytest.raises(Ec2Error):
        params.parse(op.input_shape, {f"KeyName.{i}": "x" for i in range(1, params.MAX_PARAMS + 2)})


RESPONSES = {
    "DescribeSecurityGroups": {
        "SecurityGroups": [
            {
                "OwnerId": "123456789012",
                "GroupName": "web",
                "GroupId": "sg-12345678",
                "Description": "a <b> & 'c'",
                "IpPermissions": [
                    {
                        "IpProtocol": "tcp",
                        "FromPort": 22,
                        "ToPort": 22,
                        "IpRanges": [{"CidrIp": "10.0.0.0/8"}],
                        "UserIdGroupPairs": [{"UserId": "123456789012", "GroupName": "default", "GroupId": "sg-1"}],
                        "Ipv6Ranges": [],
                        "PrefixListIds": [],
                    }
                ],
                "IpPermissionsEgress": [],
                "Tags": [{"Key": "Name", "Value": "x"}],
            }
        ]
    },
    "DescribeInstances": {
        "Reservations": [
            {
                "ReservationId": "r-12345678",
                "OwnerId": "123456789012",
                "Groups": [{"GroupName": "default", "GroupId": "sg-1"}],
                "Instances": [
                    {
                        "InstanceId": "i-12345678",
                        "ImageId": "emi-12345678",
                        "State": {"Code": 16, "Name": "running"},
                        "PrivateDnsName": "",
                        "InstanceType": "m1.small",
                        "LaunchTime": dt.datetime(2026, 11, 21, 12, 0, 1, 123000, tzinfo=dt.UTC),
                        "Placement": {"AvailabilityZone": "zone1"},
                        "AmiLaunchIndex": 0,
                        "Tags": [{"Key": "Name", "Value": "web"}],
                        "Monitoring": {"State": "disabled"},
                        "EbsOptimized": False,
                    }
                ],
            }
        ],
        "NextToken": "n",
    },
    "DescribeKeyPairs": {
        "KeyPairs": [
            {
                "KeyPairId": "key-12345678",
                "KeyName": "k",
                "KeyFingerprint": "aa:bb",
                "KeyType": "rsa",
                "CreateTime": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
            }
        ]
    },
    "DeleteKeyPair": {"Return": True, "KeyPairId": "key-12345678"},
    "DescribeAvailabilityZones": {
        "AvailabilityZones": [{"ZoneName": "zone1", "State": "available", "RegionName": "eucalyptus", "Messages": []}]
    },
}


@pytest.mark.parametrize("operation", sorted(RESPONSES))
def test_botocore_parses_what_xml_writes(operation):
    op = model.operation(operation)
    body = xml.response(op, RESPONSES[operation], "req-1", "2013-02-01")
    parsed = parsers.EC2QueryParser().parse({"body": body, "headers": {}, "status_code": 200}, op.output_shape)
    assert parsed.pop("ResponseMetadata")["RequestId"] == "req-1"
    assert parsed == RESPONSES[operation]


def test_error_xml_parses():
    op = model.operation("DescribeKeyPairs")
    body = xml.error("InvalidKeyPair.NotFound", "The key pair 'a&b' does not exist", "req-2")
    parsed = parsers.EC2QueryParser().parse({"body": body, "headers": {}, "status_code": 400}, op.output_shape)
    assert parsed["Error"] == {"Code": "InvalidKeyPair.NotFound", "Message": "The key pair 'a&b' does not exist"}
    assert parsed["ResponseMetadata"]["RequestId"] == "req-2"


def test_control_characters_do_not_break_xml():
    op = model.operation("DescribeKeyPairs")
    body = xml.response(op, {"KeyPairs": [{"KeyName": "bad\x00\x07name"}]}, "r", "2016-11-15")
    parsed = parsers.EC2QueryParser().parse({"body": body, "headers": {}, "status_code": 200}, op.output_shape)
    assert parsed["KeyPairs"][0]["KeyName"] == "badname"
