"""Security groups and rules through boto3, awscli and old-style flat parameters against a real CLC."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from tests.clc.ec2_helpers import aws, aws_error, client, code, sigv2, start_clc, stop_clean


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, clc_database):
    instance = start_clc(tmp_path_factory.mktemp("groups") / "cloud", clc_database)
    try:
        yield instance
    finally:
        stop_clean(instance)


def group(ec2, name: str) -> dict:
    return ec2.describe_security_groups(GroupNames=[name])["SecurityGroups"][0]


def test_default_group_exists(cloud, alice):
    ec2 = client(cloud, alice)
    default = group(ec2, "default")
    assert default["OwnerId"] == alice.account_id
    assert default["GroupId"].startswith("sg-")
    assert default["IpPermissions"] == [] and default["IpPermissionsEgress"] == []
    with pytest.raises(ClientError) as caught:
        ec2.delete_security_group(GroupName="default")
    assert code(caught) == "CannotDelete"
    with pytest.raises(ClientError) as caught:
        ec2.create_security_group(GroupName="default", Description="again")
    assert code(caught) == "InvalidGroup.Duplicate"


def test_create_authorize_describe_revoke(cloud, alice):
    ec2 = client(cloud, alice)
    created = ec2.create_security_group(GroupName="web", Description="web servers")
    ec2.authorize_security_group_ingress(
        GroupName="web",
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
            {
                "IpProtocol": "tcp",
                "FromPort": 22,
                "ToPort": 22,
                "IpRanges": [{"CidrIp": "10.0.0.0/8"}, {"CidrIp": "192.168.1.7/24"}],
            },
            {"IpProtocol": "icmp", "FromPort": 8, "ToPort": -1, "IpRanges": [{"CidrIp": "10.1.0.0/16"}]},
            {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432, "UserIdGroupPairs": [{"GroupName": "default"}]},
        ],
    )
    described = group(ec2, "web")
    assert described["GroupId"] == created["GroupId"] and described["Description"] == "web servers"
    perms = {(p["IpProtocol"], p.get("FromPort"), p.get("ToPort")): p for p in described["IpPermissions"]}
    assert set(perms) == {("tcp", 80, 80), ("tcp", 22, 22), ("icmp", 8, -1), ("tcp", 5432, 5432)}
    assert [r["CidrIp"] for r in perms[("tcp", 22, 22)]["IpRanges"]] == ["10.0.0.0/8", "192.168.1.0/24"]
    default = group(ec2, "default")
    assert perms[("tcp", 5432, 5432)]["UserIdGroupPairs"] == [
        {"UserId": alice.account_id, "GroupName": "default", "GroupId": default["GroupId"]}
    ]
    with pytest.raises(ClientError) as caught:
        ec2.authorize_security_group_ingress(
            GroupId=created["GroupId"],
            IpPermissions=[{"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
        )
    assert code(caught) == "InvalidPermission.Duplicate"
    ec2.revoke_security_group_ingress(
        GroupId=created["GroupId"],
        IpPermissions=[{"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
    )
    remaining = {(p["IpProtocol"], p.get("FromPort")) for p in group(ec2, "web")["IpPermissions"]}
    assert ("tcp", 80) not in remaining and ("tcp", 22) in remaining
    with pytest.raises(ClientError) as caught:
        ec2.revoke_security_group_ingress(
            GroupName="web",
            IpPermissions=[{"IpProtocol": "udp", "FromPort": 53, "ToPort": 53, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
        )
    assert code(caught) == "InvalidPermission.NotFound"
    # The default group is referenced by web's rule: it cannot go, nor can a group others refer to.
    ec2.create_security_group(GroupName="db", Description="databases")
    ec2.authorize_security_group_ingress(
        GroupName="db",
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432, "UserIdGroupPairs": [{"GroupName": "web"}]}
        ],
    )
    with pytest.raises(ClientError) as caught:
        ec2.delete_security_group(GroupName="web")
    assert code(caught) == "InvalidGroup.InUse"
    ec2.delete_security_group(GroupName="db")
    ec2.delete_security_group(GroupName="web")
    names = {g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    assert "web" not in names and "db" not in names


def test_bad_rules(cloud, alice):
    ec2 = client(cloud, alice)
    ec2.create_security_group(GroupName="strict", Description="bad input target")
    bad = [
        {"IpProtocol": "tcp", "FromPort": 90, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"IpProtocol": "tcp", "FromPort": 0, "ToPort": 70000, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "300.1.1.1/8"}]},
        {"IpProtocol": "gre-ish", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22},
    ]
    for permission in bad:
        with pytest.raises(ClientError) as caught:
            ec2.authorize_security_group_ingress(GroupName="strict", IpPermissions=[permission])
        assert code(caught) in ("InvalidParameterValue", "MissingParameter"), permission
    with pytest.raises(ClientError) as caught:
        ec2.authorize_security_group_ingress(
            GroupName="strict",
            IpPermissions=[
                {"IpProtocol": "tcp", "FromPort": 1, "ToPort": 2, "UserIdGroupPairs": [{"GroupName": "ghost"}]}
            ],
        )
    assert code(caught) == "InvalidGroup.NotFound"
    with pytest.raises(ClientError) as caught:
        ec2.authorize_security_group_ingress(
            GroupName="nonexistent",
            IpPermissions=[{"IpProtocol": "tcp", "FromPort": 1, "ToPort": 2, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
        )
    assert code(caught) == "InvalidGroup.NotFound"
    assert group(ec2, "strict")["IpPermissions"] == []


def test_old_flat_parameters(cloud, alice, bob):
    """ec2-api-tools / euca2ools 1.x send IpProtocol, FromPort, ToPort, CidrIp and source group names flat."""
    ec2 = client(cloud, alice)
    ec2.create_security_group(GroupName="flat", Description="old style")
    url = cloud.url("clc") + "/services/Eucalyptus"
    base = {"Action": "AuthorizeSecurityGroupIngress", "Version": "2009-11-30", "GroupName": "flat"}
    reply = sigv2(url, {**base, "IpProtocol": "tcp", "FromPort": "22", "ToPort": "22", "CidrIp": "1.2.3.0/24"}, alice)
    assert reply.status == 200, reply.body
    client(cloud, bob).create_security_group(GroupName="bobs", Description="bob's group")
    reply = sigv2(url, {**base, "SourceSecurityGroupName": "bobs", "SourceSecurityGroupOwnerId": bob.account_id}, alice)
    assert reply.status == 200, reply.body
    old_pairs = {
        **base,
        "IpPermissions.1.IpProtocol": "udp",
        "IpPermissions.1.FromPort": "53",
        "IpPermissions.1.ToPort": "53",
        "IpPermissions.1.Groups.1.GroupName": "default",
    }
    assert sigv2(url, old_pairs, alice).status == 200
    perms = {(p["IpProtocol"], p.get("FromPort"), p.get("ToPort")): p for p in group(ec2, "flat")["IpPermissions"]}
    assert perms[("tcp", 22, 22)]["IpRanges"] == [{"CidrIp": "1.2.3.0/24"}]
    # A source group without a protocol grants all of tcp, udp and icmp (EC2-Classic).
    for key in (("tcp", 0, 65535), ("udp", 0, 65535), ("icmp", -1, -1)):
        pairs = perms[key]["UserIdGroupPairs"]
        assert [(p["UserId"], p["GroupName"]) for p in pairs] == [(bob.account_id, "bobs")]
    assert perms[("udp", 53, 53)]["UserIdGroupPairs"][0]["GroupName"] == "default"
    revoke = {**base, "Action": "RevokeSecurityGroupIngress", "IpProtocol": "tcp", "FromPort": "22", "ToPort": "22"}
    assert sigv2(url, {**revoke, "CidrIp": "1.2.3.0/24"}, alice).status == 200
    assert sigv2(url, {**revoke, "CidrIp": "1.2.3.0/24"}, alice).code == "InvalidPermission.NotFound"
    missing = sigv2(url, {**base, "FromPort": "22", "ToPort": "22", "CidrIp": "1.2.3.0/24"}, alice)
    assert missing.code == "MissingParameter"


def test_filters(cloud, alice):
    ec2 = client(cloud, alice)
    ec2.create_security_group(GroupName="filtered", Description="to be found")
    ec2.authorize_security_group_ingress(
        GroupName="filtered",
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "172.16.0.0/12"}]}
        ],
    )
    by_cidr = ec2.describe_security_groups(Filters=[{"Name": "ip-permission.cidr", "Values": ["172.16.0.0/12"]}])
    assert [g["GroupName"] for g in by_cidr["SecurityGroups"]] == ["filtered"]
    by_port = ec2.describe_security_groups(
        Filters=[{"Name": "ip-permission.from-port", "Values": ["443"]}, {"Name": "group-name", "Values": ["filt*"]}]
    )
    assert [g["GroupName"] for g in by_port["SecurityGroups"]] == ["filtered"]
    by_desc = ec2.describe_security_groups(Filters=[{"Name": "description", "Values": ["to be ?ound"]}])
    assert [g["GroupName"] for g in by_desc["SecurityGroups"]] == ["filtered"]
    assert ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["zzz*"]}])["SecurityGroups"] == []
    with pytest.raises(ClientError) as caught:
        ec2.describe_security_groups(GroupNames=["ghost"])
    assert code(caught) == "InvalidGroup.NotFound"
    for index in range(6):
        ec2.create_security_group(GroupName=f"page-{index}", Description="paging")
    pages, token = [], None
    while True:
        kwargs = {"MaxResults": 5, **({"NextToken": token} if token else {})}
        answer = ec2.describe_security_groups(**kwargs)
        pages.append([g["GroupName"] for g in answer["SecurityGroups"]])
        token = answer.get("NextToken")
        if not token:
            break
    everything = [g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]]
    assert [name for page in pages for name in page] == everything
    assert len(pages) >= 2 and all(len(p) <= 5 for p in pages)


def test_isolation(cloud, alice, bob):
    ec2_a, ec2_b = client(cloud, alice), client(cloud, bob)
    mine = ec2_a.create_security_group(GroupName="private", Description="alice's")
    assert "private" not in {g["GroupName"] for g in ec2_b.describe_security_groups()["SecurityGroups"]}
    assert all(g["OwnerId"] == bob.account_id for g in ec2_b.describe_security_groups()["SecurityGroups"])
    for attempt in (
        lambda: ec2_b.delete_security_group(GroupId=mine["GroupId"]),
        lambda: ec2_b.delete_security_group(GroupName="private"),
        lambda: ec2_b.describe_security_groups(GroupIds=[mine["GroupId"]]),
        lambda: ec2_b.authorize_security_group_ingress(
            GroupId=mine["GroupId"],
            IpPermissions=[{"IpProtocol": "tcp", "FromPort": 1, "ToPort": 2, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
        ),
    ):
        with pytest.raises(ClientError) as caught:
            attempt()
        assert code(caught) == "InvalidGroup.NotFound"
    assert group(ec2_a, "private")["GroupId"] == mine["GroupId"]
    ec2_b.create_security_group(GroupName="private", Description="bob's own")
    assert group(ec2_b, "private")["GroupId"] != mine["GroupId"]


def test_awscli(cloud, bob):
    created = aws(cloud, bob, "create-security-group", "--group-name", "cli", "--description", "from awscli")
    aws(
        cloud,
        bob,
        "authorize-security-group-ingress",
        "--group-name",
        "cli",
        "--protocol",
        "tcp",
        "--port",
        "8000-8080",
        "--cidr",
        "203.0.113.0/24",
    )
    described = aws(cloud, bob, "describe-security-groups", "--group-names", "cli")["SecurityGroups"][0]
    assert described["GroupId"] == created["GroupId"]
    assert described["IpPermissions"][0]["FromPort"] == 8000 and described["IpPermissions"][0]["ToPort"] == 8080
    assert described["IpPermissions"][0]["IpRanges"] == [{"CidrIp": "203.0.113.0/24"}]
    error = aws_error(
        cloud, bob, "authorize-security-group-ingress", "--group-name", "cli", "--protocol", "tcp", "--port",
        "8000-8080", "--cidr", "203.0.113.0/24",
    )  # fmt: skip
    assert "InvalidPermission.Duplicate" in error
    aws(cloud, bob, "delete-security-group", "--group-id", created["GroupId"])
    assert "InvalidGroup.NotFound" in aws_error(cloud, bob, "describe-security-groups", "--group-names", "cli")
