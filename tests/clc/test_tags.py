"""Tags on security groups and key pairs through boto3 and awscli against a real CLC: create, describe with
filters and paging, delete by key or key+value, tag filters in other describes, limits, isolation."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from tests.clc.ec2_helpers import aws, client, code, start_clc, stop_clean


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, clc_database):
    instance = start_clc(tmp_path_factory.mktemp("tags") / "cloud", clc_database)
    try:
        yield instance
    finally:
        stop_clean(instance)


def tagset(ec2, resource_id: str) -> dict[str, str]:
    tags = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [resource_id]}])["Tags"]
    return {t["Key"]: t["Value"] for t in tags}


def test_create_describe_delete(cloud, alice):
    ec2 = client(cloud, alice)
    sg = ec2.create_security_group(GroupName="tagged", Description="tags")["GroupId"]
    key = ec2.create_key_pair(KeyName="tagged-key")["KeyPairId"]
    ec2.create_tags(Resources=[sg, key], Tags=[{"Key": "Name", "Value": "web"}, {"Key": "env", "Value": "prod"}])
    assert tagset(ec2, sg) == {"Name": "web", "env": "prod"}
    described = ec2.describe_tags(Filters=[{"Name": "key", "Values": ["env"]}])["Tags"]
    assert {(t["ResourceId"], t["ResourceType"], t["Value"]) for t in described} == {
        (sg, "security-group", "prod"),
        (key, "key-pair", "prod"),
    }
    only_groups = ec2.describe_tags(Filters=[{"Name": "resource-type", "Values": ["security-group"]}])["Tags"]
    assert {t["ResourceId"] for t in only_groups} == {sg}
    # Overwrite a value, delete by key+value (no match: kept), by key+value (match), by key alone.
    ec2.create_tags(Resources=[sg], Tags=[{"Key": "env", "Value": "staging"}])
    assert tagset(ec2, sg)["env"] == "staging"
    ec2.delete_tags(Resources=[sg], Tags=[{"Key": "env", "Value": "prod"}])
    assert tagset(ec2, sg)["env"] == "staging"
    ec2.delete_tags(Resources=[sg], Tags=[{"Key": "env", "Value": "staging"}])
    assert "env" not in tagset(ec2, sg)
    ec2.delete_tags(Resources=[key], Tags=[{"Key": "Name"}])
    assert tagset(ec2, key) == {"env": "prod"}
    # Tags show in the resources' own answers and filter them.
    groups = ec2.describe_security_groups(Filters=[{"Name": "tag:Name", "Values": ["web"]}])["SecurityGroups"]
    assert [g["GroupId"] for g in groups] == [sg]
    assert groups[0]["Tags"] == [{"Key": "Name", "Value": "web"}]
    keys = ec2.describe_key_pairs(Filters=[{"Name": "tag-key", "Values": ["env"]}])["KeyPairs"]
    assert [k["KeyPairId"] for k in keys] == [key]
    assert ec2.describe_key_pairs(Filters=[{"Name": "tag:env", "Values": ["dev"]}])["KeyPairs"] == []
    # Deleting the resource deletes its tags.
    ec2.delete_key_pair(KeyName="tagged-key")
    assert tagset(ec2, key) == {}


def test_tag_specifications_at_creation(cloud, alice):
    ec2 = client(cloud, alice)
    created = ec2.create_security_group(
        GroupName="born-tagged",
        Description="x",
        TagSpecifications=[{"ResourceType": "security-group", "Tags": [{"Key": "team", "Value": "blue"}]}],
    )
    assert created["Tags"] == [{"Key": "team", "Value": "blue"}]
    assert tagset(ec2, created["GroupId"]) == {"team": "blue"}
    with pytest.raises(ClientError) as caught:
        ec2.create_key_pair(
            KeyName="wrong-type", TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "a", "Value": "b"}]}]
        )
    assert code(caught) == "InvalidParameterValue"


def test_bad_input(cloud, alice):
    ec2 = client(cloud, alice)
    sg = ec2.create_security_group(GroupName="limits", Description="limits")["GroupId"]
    cases = [
        (["sg-00000000"], [{"Key": "a", "Value": "b"}], "InvalidGroup.NotFound"),
        (["foo-12345678"], [{"Key": "a", "Value": "b"}], "InvalidID"),
        ([sg], [{"Key": "aws:reserved", "Value": "b"}], "InvalidParameterValue"),
        ([sg], [{"Key": "k" * 129, "Value": "b"}], "InvalidParameterValue"),
        ([sg], [{"Key": "k", "Value": "v" * 257}], "InvalidParameterValue"),
        ([sg], [{"Key": f"k{i}", "Value": "v"} for i in range(51)], "TagLimitExceeded"),
    ]
    for resources, tags, expected in cases:
        with pytest.raises(ClientError) as caught:
            ec2.create_tags(Resources=resources, Tags=tags)
        assert code(caught) == expected, (resources, expected)
    assert tagset(ec2, sg) == {}  # nothing half-applied
    with pytest.raises(ClientError) as caught:
        ec2.describe_tags(Filters=[{"Name": "colour", "Values": ["red"]}])
    assert code(caught) == "InvalidParameterValue"
    with pytest.raises(ClientError) as caught:
        ec2.describe_tags(NextToken="!!!not-a-token")
    assert code(caught) == "InvalidNextToken"


def test_paging(cloud, alice):
    ec2 = client(cloud, alice)
    sg = ec2.create_security_group(GroupName="many-tags", Description="paging")["GroupId"]
    ec2.create_tags(Resources=[sg], Tags=[{"Key": f"k{i:02d}", "Value": str(i)} for i in range(12)])
    seen, token = [], None
    while True:
        answer = ec2.describe_tags(
            MaxResults=5, Filters=[{"Name": "resource-id", "Values": [sg]}], **({"NextToken": token} if token else {})
        )
        assert len(answer["Tags"]) <= 5
        seen += [t["Key"] for t in answer["Tags"]]
        token = answer.get("NextToken")
        if not token:
            break
    assert seen == [f"k{i:02d}" for i in range(12)]


def test_isolation(cloud, alice, bob):
    ec2_a, ec2_b = client(cloud, alice), client(cloud, bob)
    sg = ec2_a.create_security_group(GroupName="alices-tagged", Description="a")["GroupId"]
    ec2_a.create_tags(Resources=[sg], Tags=[{"Key": "owner", "Value": "alice"}])
    with pytest.raises(ClientError) as caught:
        ec2_b.create_tags(Resources=[sg], Tags=[{"Key": "owner", "Value": "bob"}])
    assert code(caught) == "InvalidGroup.NotFound"
    with pytest.raises(ClientError) as caught:
        ec2_b.delete_tags(Resources=[sg])
    assert code(caught) == "InvalidGroup.NotFound"
    assert ec2_b.describe_tags(Filters=[{"Name": "resource-id", "Values": [sg]}])["Tags"] == []
    assert tagset(ec2_a, sg) == {"owner": "alice"}


def test_awscli(cloud, bob):
    sg = aws(cloud, bob, "create-security-group", "--group-name", "cli-tags", "--description", "x")["GroupId"]
    aws(cloud, bob, "create-tags", "--resources", sg, "--tags", "Key=Name,Value=cli", "Key=stage,Value=")
    described = aws(cloud, bob, "describe-tags", "--filters", f"Name=resource-id,Values={sg}")["Tags"]
    assert {(t["Key"], t["Value"]) for t in described} == {("Name", "cli"), ("stage", "")}
    aws(cloud, bob, "delete-tags", "--resources", sg, "--tags", "Key=stage")
    described = aws(cloud, bob, "describe-tags", "--filters", f"Name=resource-id,Values={sg}")["Tags"]
    assert [(t["Key"], t["Value"]) for t in described] == [("Name", "cli")]
