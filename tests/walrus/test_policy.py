"""Bucket policies and the public access block through real requests: a table of evaluation cases (allow, deny,
each condition operator, anonymous, cross-account), the API's failure paths, and awscli and s3cmd."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.walrus.cli import aws_error, aws_ok, s3cmd_config, s3cmd_error, s3cmd_ok
from tests.walrus.conftest import Walrus

BUCKET = "pol"
ALICE, BOB = "111111111111", "222222222222"
ARN = f"arn:aws:s3:::{BUCKET}"


def code(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.response["Error"]["Code"]


@pytest.fixture(scope="module")
def clients(walrus: Walrus) -> dict:
    found = {
        "alice": walrus.client("alice"),
        "bob": walrus.client("bob"),
        "bob-v2": walrus.client("bob", signature="s3"),
        "anon": walrus.anonymous(),
    }
    alice = found["alice"]
    alice.create_bucket(Bucket=BUCKET)
    for key in ("public/a.txt", "secret/s.txt", "home/bob/x", "home/carol/y"):
        alice.put_object(Bucket=BUCKET, Key=key, Body=b"data of " + key.encode())
    return found


def statement(effect: str, principal, action, resource, condition=None, negate: str = "") -> dict:
    out = {"Effect": effect}
    out["NotPrincipal" if "principal" in negate else "Principal"] = principal
    out["NotAction" if "action" in negate else "Action"] = action
    out["NotResource" if "resource" in negate else "Resource"] = resource
    if condition:
        out["Condition"] = condition
    return out


def attempt(clients: dict, who: str, op: str, **kwargs) -> str:
    """'ok' or the S3 error code of one request."""
    client = clients[who]
    kwargs.setdefault("Bucket", BUCKET)
    try:
        if op == "get":
            client.get_object(**kwargs)["Body"].read()
        elif op == "put":
            client.put_object(Body=b"x", **kwargs)
        elif op == "delete":
            client.delete_object(**kwargs)
        elif op == "list":
            client.list_objects_v2(**kwargs)
        else:
            raise AssertionError(op)
    except ClientError as err:
        return err.response["Error"]["Code"]
    return "ok"


EVERYONE = "*"
BOB_ROOT = {"AWS": f"arn:aws:iam::{BOB}:root"}
OBJECTS = f"{ARN}/*"
# (case id, statements, [(who, operation, request arguments, expected outcome)])
CASES = [
    ("no-policy-acl-decides", [], [("bob", "get", {"Key": "public/a.txt"}, "AccessDenied"),
                                   ("alice", "get", {"Key": "public/a.txt"}, "ok")]),
    ("allow-cross-account-root", [statement("Allow", BOB_ROOT, "s3:GetObject", OBJECTS)],
     [("bob", "get", {"Key": "secret/s.txt"}, "ok"), ("anon", "get", {"Key": "secret/s.txt"}, "AccessDenied"),
      ("bob", "put", {"Key": "new"}, "AccessDenied")]),
    ("allow-account-id-and-user-arn", [statement("Allow", {"AWS": [BOB, f"arn:aws:iam::{BOB}:user/bob"]},
                                                 ["s3:GetObject", "s3:ListBucket"], [ARN, OBJECTS])],
     [("bob", "get", {"Key": "public/a.txt"}, "ok"), ("bob", "list", {}, "ok")]),
    ("allow-anonymous-by-prefix", [statement("Allow", EVERYONE, "s3:GetObject", f"{ARN}/public/*")],
     [("anon", "get", {"Key": "public/a.txt"}, "ok"), ("anon", "get", {"Key": "secret/s.txt"}, "AccessDenied")]),
    ("explicit-deny-beats-owner-and-allow", [statement("Allow", EVERYONE, "s3:*", OBJECTS),
                                             statement("Deny", EVERYONE, "s3:GetObject", f"{ARN}/secret/*")],
     [("alice", "get", {"Key": "secret/s.txt"}, "AccessDenied"), ("bob", "get", {"Key": "secret/s.txt"},
                                                                   "AccessDenied"),
      ("alice", "get", {"Key": "public/a.txt"}, "ok")]),
    ("deny-wildcard-action", [statement("Deny", BOB_ROOT, "s3:Put*", OBJECTS),
                              statement("Allow", BOB_ROOT, "s3:*", OBJECTS)],
     [("bob", "put", {"Key": "b"}, "AccessDenied"), ("bob", "get", {"Key": "public/a.txt"}, "ok")]),
    ("not-principal", [statement("Deny", {"AWS": f"arn:aws:iam::{ALICE}:root"}, "s3:GetObject", OBJECTS,
                                 negate="principal"), statement("Allow", EVERYONE, "s3:GetObject", OBJECTS)],
     [("alice", "get", {"Key": "public/a.txt"}, "ok"), ("bob", "get", {"Key": "public/a.txt"}, "AccessDenied"),
      ("anon", "get", {"Key": "public/a.txt"}, "AccessDenied")]),
    ("not-action", [statement("Allow", BOB_ROOT, "s3:DeleteObject", OBJECTS, negate="action")],
     [("bob", "put", {"Key": "by-bob"}, "ok"), ("bob", "delete", {"Key": "by-bob"}, "AccessDenied")]),
    ("not-resource", [statement("Allow", BOB_ROOT, "s3:GetObject", f"{ARN}/secret/*", negate="resource")],
     [("bob", "get", {"Key": "public/a.txt"}, "ok"), ("bob", "get", {"Key": "secret/s.txt"}, "AccessDenied")]),
    ("string-equals-acl-header", [statement("Allow", BOB_ROOT, "s3:PutObject", OBJECTS,
                                            {"StringEquals": {"s3:x-amz-acl": "bucket-owner-full-control"}})],
     [("bob", "put", {"Key": "c1", "ACL": "bucket-owner-full-control"}, "ok"),
      ("bob", "put", {"Key": "c2"}, "AccessDenied")]),
    ("string-not-equals-ignore-case", [statement("Deny", BOB_ROOT, "s3:PutObject", OBJECTS,
                                                 {"StringNotEqualsIgnoreCase": {"s3:x-amz-acl": "PRIVATE"}}),
                                       statement("Allow", BOB_ROOT, "s3:PutObject", OBJECTS)],
     [("bob", "put", {"Key": "c3", "ACL": "private"}, "ok"),
      ("bob", "put", {"Key": "c4", "ACL": "public-read"}, "AccessDenied"),
      ("bob", "put", {"Key": "c5"}, "AccessDenied")]),  # a missing key satisfies a negated operator
    ("string-like-prefix", [statement("Allow", BOB_ROOT, "s3:ListBucket", ARN,
                                      {"StringLike": {"s3:prefix": ["home/bob/*", "public/*"]}})],
     [("bob", "list", {"Prefix": "home/bob/"}, "ok"), ("bob", "list", {"Prefix": "home/carol/"}, "AccessDenied"),
      ("bob", "list", {}, "AccessDenied")]),
    ("string-not-like", [statement("Allow", BOB_ROOT, "s3:ListBucket", ARN,
                                   {"StringNotLike": {"s3:prefix": "secret*"}})],
     [("bob", "list", {"Prefix": "public/"}, "ok"), ("bob", "list", {"Prefix": "secret/"}, "AccessDenied")]),
    ("numeric-max-keys", [statement("Allow", BOB_ROOT, "s3:ListBucket", ARN,
                                    {"NumericLessThanEquals": {"s3:max-keys": "10"}})],
     [("bob", "list", {"MaxKeys": 5}, "ok"), ("bob", "list", {"MaxKeys": 50}, "AccessDenied"),
      ("bob", "list", {}, "AccessDenied")]),
    # IfExists: an absent key makes the condition true
    ("numeric-if-exists", [statement("Allow", BOB_ROOT, "s3:ListBucket", ARN,
                                     {"NumericLessThanEqualsIfExists": {"s3:max-keys": "10"}})],
     [("bob", "list", {}, "ok"), ("bob", "list", {"MaxKeys": 11}, "AccessDenied")]),
    ("numeric-greater-than-deny", [statement("Deny", BOB_ROOT, "s3:ListBucket", ARN,
                                             {"NumericGreaterThan": {"s3:max-keys": "10"}}),
                                   statement("Allow", BOB_ROOT, "s3:ListBucket", ARN)],
     [("bob", "list", {}, "ok"), ("bob", "list", {"MaxKeys": 11}, "AccessDenied")]),
    ("date-less-than-future", [statement("Allow", BOB_ROOT, "s3:GetObject", OBJECTS,
                                         {"DateLessThan": {"aws:CurrentTime": "2999-01-01T00:00:00Z"}})],
     [("bob", "get", {"Key": "public/a.txt"}, "ok")]),
    ("date-greater-than-future", [statement("Allow", BOB_ROOT, "s3:GetObject", OBJECTS,
                                            {"DateGreaterThan": {"aws:CurrentTime": "2999-01-01T00:00:00Z"}})],
     [("bob", "get", {"Key": "public/a.txt"}, "AccessDenied")]),
    ("ip-address", [statement("Allow", EVERYONE, "s3:GetObject", OBJECTS,
                              {"IpAddress": {"aws:SourceIp": ["127.0.0.0/8", "::1/128"]}})],
     [("anon", "get", {"Key": "public/a.txt"}, "ok")]),
    ("ip-address-elsewhere", [statement("Allow", EVERYONE, "s3:GetObject", OBJECTS,
                                        {"IpAddress": {"aws:SourceIp": "192.0.2.0/24"}})],
     [("anon", "get", {"Key": "public/a.txt"}, "AccessDenied")]),
    ("not-ip-address-deny", [statement("Deny", EVERYONE, "s3:*", [ARN, OBJECTS],
                                       {"NotIpAddress": {"aws:SourceIp": "192.0.2.0/24"}})],
     [("alice", "get", {"Key": "public/a.txt"}, "AccessDenied"), ("alice", "list", {}, "AccessDenied")]),
    ("bool-secure-transport", [statement("Deny", EVERYONE, "s3:GetObject", OBJECTS,
                                         {"Bool": {"aws:SecureTransport": "false"}})],
     [("alice", "get", {"Key": "public/a.txt"}, "AccessDenied")]),
    ("null-header", [statement("Deny", EVERYONE, "s3:PutObject", OBJECTS,
                               {"Null": {"s3:x-amz-acl": "true"}})],
     [("alice", "put", {"Key": "n1"}, "AccessDenied"), ("alice", "put", {"Key": "n2", "ACL": "private"}, "ok")]),
    ("username-and-variable", [statement("Allow", EVERYONE, "s3:GetObject", f"{ARN}/home/${{aws:username}}/*")],
     [("bob", "get", {"Key": "home/bob/x"}, "ok"), ("bob", "get", {"Key": "home/carol/y"}, "AccessDenied")]),
    ("signature-version", [statement("Deny", EVERYONE, "s3:*", [ARN, OBJECTS],
                                     {"StringNotEquals": {"s3:signatureversion": "AWS4-HMAC-SHA256"}}),
                           statement("Allow", BOB_ROOT, "s3:GetObject", OBJECTS)],
     [("bob", "get", {"Key": "public/a.txt"}, "ok"), ("bob-v2", "get", {"Key": "public/a.txt"}, "AccessDenied")]),
    ("for-any-value-tag-keys", [statement("Allow", BOB_ROOT, "s3:PutObject", OBJECTS,
                                          {"ForAnyValue:StringEquals": {"s3:RequestObjectTagKeys": "project"}})],
     [("bob", "put", {"Key": "t1", "Tagging": "project=koala&x=1"}, "ok"),
      ("bob", "put", {"Key": "t2", "Tagging": "x=1"}, "AccessDenied"), ("bob", "put", {"Key": "t3"}, "AccessDenied")]),
    ("for-all-values-tag-keys", [statement("Allow", BOB_ROOT, "s3:PutObject", OBJECTS,
                                           {"ForAllValues:StringLike": {"s3:RequestObjectTagKeys": ["team", "p*"]}})],
     [("bob", "put", {"Key": "t4", "Tagging": "team=a&project=b"}, "ok"),
      ("bob", "put", {"Key": "t5", "Tagging": "team=a&cost=1"}, "AccessDenied")]),
    ("principal-account", [statement("Allow", EVERYONE, "s3:GetObject", OBJECTS,
                                     {"StringEquals": {"aws:PrincipalAccount": BOB}})],
     [("bob", "get", {"Key": "public/a.txt"}, "ok"), ("anon", "get", {"Key": "public/a.txt"}, "AccessDenied")]),
]  # fmt: skip


@pytest.mark.parametrize("case_id,statements,checks", CASES, ids=[c[0] for c in CASES])
def test_policy_evaluation(clients: dict, case_id: str, statements: list, checks: list) -> None:
    alice = clients["alice"]
    if statements:
        alice.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps({"Version": "2012-10-17", "Statement": statements}))
    else:
        alice.delete_bucket_policy(Bucket=BUCKET)
    try:
        outcomes = [attempt(clients, who, op, **dict(args)) for who, op, args, _ in checks]
    finally:
        alice.delete_bucket_policy(Bucket=BUCKET)
    assert outcomes == [expected for *_, expected in checks]


def test_existing_object_tag_sees_stored_tags(clients: dict) -> None:
    """s3:ExistingObjectTag/<key> reads the object's stored tags: an Allow on a tag value lets bob read only the
    objects tagged so, a Deny on a tag keeps even the owner from deleting, and re-tagging changes the answer."""
    alice = clients["alice"]
    alice.put_object(Bucket=BUCKET, Key="tagged/open", Body=b"o", Tagging="access=shared")
    alice.put_object(Bucket=BUCKET, Key="tagged/closed", Body=b"c", Tagging="access=private")
    alice.put_object(Bucket=BUCKET, Key="tagged/kept", Body=b"k", Tagging="retain=yes")
    alice.put_object(Bucket=BUCKET, Key="tagged/loose", Body=b"l")
    statements = [
        statement(
            "Allow", BOB_ROOT, "s3:GetObject", OBJECTS, {"StringEquals": {"s3:ExistingObjectTag/access": "shared"}}
        ),
        statement(
            "Deny", EVERYONE, "s3:DeleteObject", OBJECTS, {"StringEquals": {"s3:ExistingObjectTag/retain": "yes"}}
        ),
    ]
    alice.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps({"Version": "2012-10-17", "Statement": statements}))
    try:
        assert attempt(clients, "bob", "get", Key="tagged/open") == "ok"
        assert attempt(clients, "bob", "get", Key="tagged/closed") == "AccessDenied"
        assert attempt(clients, "bob", "get", Key="public/a.txt") == "AccessDenied"  # no tags: the key is absent
        alice.put_object_tagging(
            Bucket=BUCKET, Key="tagged/closed", Tagging={"TagSet": [{"Key": "access", "Value": "shared"}]}
        )
        assert attempt(clients, "bob", "get", Key="tagged/closed") == "ok"
        alice.delete_object_tagging(Bucket=BUCKET, Key="tagged/open")
        assert attempt(clients, "bob", "get", Key="tagged/open") == "AccessDenied"
        assert attempt(clients, "alice", "delete", Key="tagged/kept") == "AccessDenied"
        assert attempt(clients, "alice", "delete", Key="tagged/loose") == "ok"
        assert alice.get_object(Bucket=BUCKET, Key="tagged/kept")["Body"].read() == b"k"
    finally:
        alice.delete_bucket_policy(Bucket=BUCKET)
    assert attempt(clients, "alice", "delete", Key="tagged/kept") == "ok"


def test_policy_api_and_failures(clients: dict, walrus: Walrus) -> None:
    alice, bob = clients["alice"], clients["bob"]
    alice.create_bucket(Bucket="pol-api")
    with pytest.raises(ClientError) as err:
        alice.get_bucket_policy(Bucket="pol-api")
    assert code(err) == "NoSuchBucketPolicy" and err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as err:
        alice.get_bucket_policy_status(Bucket="pol-api")
    assert code(err) == "NoSuchBucketPolicy"
    good = {
        "Version": "2012-10-17",
        "Statement": [statement("Allow", BOB_ROOT, "s3:GetObject", "arn:aws:s3:::pol-api/*")],
    }
    alice.put_bucket_policy(Bucket="pol-api", Policy=json.dumps(good))
    assert json.loads(alice.get_bucket_policy(Bucket="pol-api")["Policy"]) == good
    assert alice.get_bucket_policy_status(Bucket="pol-api")["PolicyStatus"]["IsPublic"] is False
    public = {"Statement": [statement("Allow", "*", "s3:GetObject", "arn:aws:s3:::pol-api/*")]}
    alice.put_bucket_policy(Bucket="pol-api", Policy=json.dumps(public))
    assert alice.get_bucket_policy_status(Bucket="pol-api")["PolicyStatus"]["IsPublic"] is True
    limited = {
        "Statement": [
            statement(
                "Allow", "*", "s3:GetObject", "arn:aws:s3:::pol-api/*", {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}
            )
        ]
    }
    alice.put_bucket_policy(Bucket="pol-api", Policy=json.dumps(limited))
    assert alice.get_bucket_policy_status(Bucket="pol-api")["PolicyStatus"]["IsPublic"] is False
    objects = "arn:aws:s3:::pol-api/*"

    def one(effect="Allow", principal="*", action="s3:GetObject", resource=objects, condition=None) -> str:
        return json.dumps({"Statement": [statement(effect, principal, action, resource, condition)]})

    bad_documents = {
        "not json": "{nope",
        "other bucket": one(resource="arn:aws:s3:::other/*"),
        "bad action": one(action="ec2:RunInstances"),
        "bad principal": one(principal={"AWS": "somebody"}),
        "bad operator": one(condition={"StringSorta": {"a:b": "c"}}),
        "bad number": one(condition={"NumericEquals": {"s3:max-keys": "x"}}),
        "bad ip": one(condition={"IpAddress": {"aws:SourceIp": "300.1.1.1"}}),
        "bad date": one(condition={"DateLessThan": {"aws:CurrentTime": "someday"}}),
        "bad bool": one(condition={"Bool": {"aws:SecureTransport": "maybe"}}),
        "bad effect": one(effect="Maybe"),
        "no statement": json.dumps({"Version": "2012-10-17"}),
        "bad version": json.dumps({"Version": "2020-01-01", "Statement": [statement("Allow", "*", "s3:*", "*")]}),
        "too big": one(resource=objects + "x" * 21000),
    }
    for name, document in bad_documents.items():
        with pytest.raises(ClientError) as err:
            alice.put_bucket_policy(Bucket="pol-api", Policy=document)
        assert code(err) == "MalformedPolicy", name
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400, name
    for call in (
        lambda: bob.put_bucket_policy(Bucket="pol-api", Policy=json.dumps(good)),
        lambda: bob.get_bucket_policy(Bucket="pol-api"),
        lambda: bob.delete_bucket_policy(Bucket="pol-api"),
        lambda: bob.get_bucket_policy_status(Bucket="pol-api"),
    ):
        with pytest.raises(ClientError) as err:
            call()
        assert code(err) == "AccessDenied"
    with pytest.raises(ClientError) as err:
        alice.put_bucket_policy(Bucket="no-such-pol", Policy=json.dumps(good))
    assert code(err) == "NoSuchBucket"
    # the owner cannot lock itself out of the policy
    deny_all = {"Statement": [statement("Deny", "*", "s3:*", ["arn:aws:s3:::pol-api", "arn:aws:s3:::pol-api/*"])]}
    alice.put_bucket_policy(Bucket="pol-api", Policy=json.dumps(deny_all))
    with pytest.raises(ClientError) as err:
        alice.list_objects_v2(Bucket="pol-api")
    assert code(err) == "AccessDenied"
    alice.get_bucket_policy(Bucket="pol-api")
    alice.delete_bucket_policy(Bucket="pol-api")
    alice.list_objects_v2(Bucket="pol-api")
    # a deleted bucket takes its policy with it
    alice.put_bucket_policy(Bucket="pol-api", Policy=json.dumps(good))
    alice.delete_bucket(Bucket="pol-api")
    alice.create_bucket(Bucket="pol-api")
    with pytest.raises(ClientError) as err:
        alice.get_bucket_policy(Bucket="pol-api")
    assert code(err) == "NoSuchBucketPolicy"


def test_public_access_block(clients: dict) -> None:
    alice, bob, anon = clients["alice"], clients["bob"], clients["anon"]
    alice.create_bucket(Bucket="pab")
    with pytest.raises(ClientError) as err:
        alice.get_public_access_block(Bucket="pab")
    assert code(err) == "NoSuchPublicAccessBlockConfiguration"
    alice.put_object(Bucket="pab", Key="o", Body=b"public bytes", ACL="public-read")
    assert anon.get_object(Bucket="pab", Key="o")["Body"].read() == b"public bytes"

    def block(**settings: bool) -> None:
        names = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")
        alice.put_public_access_block(
            Bucket="pab", PublicAccessBlockConfiguration={n: settings.get(n, False) for n in names}
        )

    # IgnorePublicAcls: the public grant stops counting, and counts again when lifted
    block(IgnorePublicAcls=True)
    got = alice.get_public_access_block(Bucket="pab")["PublicAccessBlockConfiguration"]
    assert got == {"BlockPublicAcls": False, "IgnorePublicAcls": True, "BlockPublicPolicy": False,
                   "RestrictPublicBuckets": False}  # fmt: skip
    with pytest.raises(ClientError) as err:
        anon.get_object(Bucket="pab", Key="o")
    assert code(err) == "AccessDenied"
    # BlockPublicAcls: requests that set a public ACL are refused, private ones pass
    block(BlockPublicAcls=True)
    anon.get_object(Bucket="pab", Key="o")
    for call in (
        lambda: alice.put_object(Bucket="pab", Key="p", Body=b"1", ACL="public-read"),
        lambda: alice.put_object_acl(Bucket="pab", Key="o", ACL="public-read-write"),
        lambda: alice.put_bucket_acl(Bucket="pab", ACL="public-read"),
        lambda: alice.create_multipart_upload(Bucket="pab", Key="m", ACL="authenticated-read"),
        lambda: alice.copy_object(Bucket="pab", Key="c", CopySource="pab/o", ACL="public-read"),
    ):
        with pytest.raises(ClientError) as err:
            call()
        assert code(err) == "AccessDenied"
    alice.put_object(Bucket="pab", Key="p", Body=b"1", ACL="private")
    # BlockPublicPolicy: a public policy is refused, a limited one accepted
    block(BlockPublicPolicy=True)
    public = {"Statement": [statement("Allow", "*", "s3:GetObject", "arn:aws:s3:::pab/*")]}
    with pytest.raises(ClientError) as err:
        alice.put_bucket_policy(Bucket="pab", Policy=json.dumps(public))
    assert code(err) == "AccessDenied"
    to_bob = {"Statement": [statement("Allow", BOB_ROOT, "s3:GetObject", "arn:aws:s3:::pab/*")]}
    alice.put_bucket_policy(Bucket="pab", Policy=json.dumps(to_bob))
    bob.get_object(Bucket="pab", Key="p")
    # RestrictPublicBuckets: with a public policy, only the owner's account gets in
    alice.delete_public_access_block(Bucket="pab")
    alice.put_bucket_policy(Bucket="pab", Policy=json.dumps(public))
    anon.get_object(Bucket="pab", Key="p")
    block(RestrictPublicBuckets=True)
    for client in (anon, bob):
        with pytest.raises(ClientError) as err:
            client.get_object(Bucket="pab", Key="p")
        assert code(err) == "AccessDenied"
    alice.get_object(Bucket="pab", Key="p")
    with pytest.raises(ClientError) as err:
        bob.put_public_access_block(Bucket="pab", PublicAccessBlockConfiguration={"BlockPublicAcls": False})
    assert code(err) == "AccessDenied"
    alice.delete_public_access_block(Bucket="pab")
    with pytest.raises(ClientError) as err:
        alice.get_public_access_block(Bucket="pab")
    assert code(err) == "NoSuchPublicAccessBlockConfiguration"
    anon.get_object(Bucket="pab", Key="p")


def test_policy_with_awscli(clients: dict, walrus: Walrus, tmp_path: Path) -> None:
    clients["alice"].create_bucket(Bucket="pol-cli")
    document = json.dumps({"Statement": [statement("Allow", BOB_ROOT, "s3:GetObject", "arn:aws:s3:::pol-cli/*")]})
    aws_ok(walrus, tmp_path, "s3api", "put-bucket-policy", "--bucket", "pol-cli", "--policy", document)
    got = json.loads(aws_ok(walrus, tmp_path, "s3api", "get-bucket-policy", "--bucket", "pol-cli"))
    assert json.loads(got["Policy"]) == json.loads(document)
    assert "MalformedPolicy" in aws_error(
        walrus, tmp_path, "s3api", "put-bucket-policy", "--bucket", "pol-cli", "--policy", "{]"
    )
    assert "AccessDenied" in aws_error(
        walrus, tmp_path, "s3api", "get-bucket-policy", "--bucket", "pol-cli", user="bob"
    )
    aws_ok(
        walrus,
        tmp_path,
        "s3api",
        "put-public-access-block",
        "--bucket",
        "pol-cli",
        "--public-access-block-configuration",
        "BlockPublicAcls=true,IgnorePublicAcls=false,BlockPublicPolicy=true,RestrictPublicBuckets=false",
    )
    block = json.loads(aws_ok(walrus, tmp_path, "s3api", "get-public-access-block", "--bucket", "pol-cli"))
    assert block["PublicAccessBlockConfiguration"]["BlockPublicPolicy"] is True
    assert "AccessDenied" in aws_error(
        walrus, tmp_path, "s3api", "put-bucket-acl", "--bucket", "pol-cli", "--acl", "public-read"
    )
    aws_ok(walrus, tmp_path, "s3api", "delete-public-access-block", "--bucket", "pol-cli")
    aws_ok(walrus, tmp_path, "s3api", "delete-bucket-policy", "--bucket", "pol-cli")
    assert "NoSuchBucketPolicy" in aws_error(walrus, tmp_path, "s3api", "get-bucket-policy", "--bucket", "pol-cli")


@pytest.mark.skipif(shutil.which("s3cmd") is None, reason="s3cmd is installed by deploy/bootstrap.sh")
def test_policy_with_s3cmd(clients: dict, walrus: Walrus, tmp_path: Path) -> None:
    config = s3cmd_config(walrus, tmp_path / "s3cfg", signature_v2=False)
    s3cmd_ok(config, "mb", "s3://pol-s3cmd")
    s3cmd_ok(config, "put", "--acl-private", __file__, "s3://pol-s3cmd/file")
    document = tmp_path / "policy.json"
    document.write_text(
        json.dumps({"Statement": [statement("Allow", "*", "s3:GetObject", "arn:aws:s3:::pol-s3cmd/*")]})
    )
    s3cmd_ok(config, "setpolicy", str(document), "s3://pol-s3cmd")
    assert "s3:GetObject" in s3cmd_ok(config, "info", "s3://pol-s3cmd")
    clients["anon"].get_object(Bucket="pol-s3cmd", Key="file")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "MalformedPolicy" in s3cmd_error(config, "setpolicy", str(bad), "s3://pol-s3cmd")
    bob_config = s3cmd_config(walrus, tmp_path / "s3cfg-bob", signature_v2=True, user="bob")
    assert "AccessDenied" in s3cmd_error(bob_config, "delpolicy", "s3://pol-s3cmd")
    s3cmd_ok(config, "delpolicy", "s3://pol-s3cmd")
    with pytest.raises(ClientError):
        clients["anon"].get_object(Bucket="pol-s3cmd", Key="file")
