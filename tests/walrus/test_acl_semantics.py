"""ACLs as S3 answers them: canned ACLs with complete grants (ID and DisplayName), bucket-owner-read and
bucket-owner-full-control, log-delivery-write, and grants to unknown accounts or e-mail addresses refused with
S3's errors, through boto3, awscli and s3cmd."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.walrus.cli import aws_error, aws_ok, s3cmd_config, s3cmd_error, s3cmd_ok
from tests.walrus.conftest import Walrus, start_walrus

ALICE = ("111111111111", "alice")
BOB = ("222222222222", "bob")
ALL = "http://acs.amazonaws.com/groups/global/AllUsers"
AUTH = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"
LOGS = "http://acs.amazonaws.com/groups/s3/LogDelivery"


@pytest.fixture(scope="module")
def walrus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walrus]:
    """With the real CLC: it is the one that says an account id does not exist."""
    instance = start_walrus(tmp_path_factory.mktemp("walrus-acl"), with_clc=True)
    try:
        yield instance
    finally:
        instance.cloud.stop()


def grants(answer: dict) -> set[tuple]:
    out = set()
    for grant in answer["Grants"]:
        grantee = grant["Grantee"]
        if grantee["Type"] == "CanonicalUser":
            out.add((grantee["ID"], grantee["DisplayName"], grant["Permission"]))
        else:
            out.add((grantee["URI"], grant["Permission"]))
    return out


def code(excinfo: pytest.ExceptionInfo) -> tuple[str, int]:
    response = excinfo.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


OWNER_FULL = (*ALICE, "FULL_CONTROL")
CANNED_BUCKET = {
    "private": {OWNER_FULL},
    "public-read": {OWNER_FULL, (ALL, "READ")},
    "public-read-write": {OWNER_FULL, (ALL, "READ"), (ALL, "WRITE")},
    "authenticated-read": {OWNER_FULL, (AUTH, "READ")},
    "log-delivery-write": {OWNER_FULL, (LOGS, "WRITE"), (LOGS, "READ_ACP")},
}


@pytest.mark.parametrize("canned", sorted(CANNED_BUCKET))
def test_canned_acls_give_complete_grants(walrus: Walrus, canned: str) -> None:
    s3 = walrus.client()
    bucket = f"canned-{canned}"
    s3.create_bucket(Bucket=bucket, ACL=canned)
    answer = s3.get_bucket_acl(Bucket=bucket)
    assert answer["Owner"] == {"ID": ALICE[0], "DisplayName": ALICE[1]}
    assert grants(answer) == CANNED_BUCKET[canned]
    if canned != "log-delivery-write":
        s3.put_object(Bucket=bucket, Key="o", Body=b"1", ACL=canned)
        assert grants(s3.get_object_acl(Bucket=bucket, Key="o")) == CANNED_BUCKET[canned]


def test_bucket_owner_canned_acls(walrus: Walrus) -> None:
    alice, bob = walrus.client(), walrus.client("bob")
    alice.create_bucket(Bucket="shared-drop")
    alice.put_bucket_acl(Bucket="shared-drop", GrantWrite=f'id="{BOB[0]}"', GrantFullControl=f'id="{ALICE[0]}"')
    bob.put_object(Bucket="shared-drop", Key="read", Body=b"r", ACL="bucket-owner-read")
    bob.put_object(Bucket="shared-drop", Key="full", Body=b"f", ACL="bucket-owner-full-control")
    bob.put_object(Bucket="shared-drop", Key="private", Body=b"p")
    assert grants(bob.get_object_acl(Bucket="shared-drop", Key="read")) == {(*BOB, "FULL_CONTROL"), (*ALICE, "READ")}
    assert grants(bob.get_object_acl(Bucket="shared-drop", Key="full")) == {
        (*BOB, "FULL_CONTROL"),
        (*ALICE, "FULL_CONTROL"),
    }
    assert alice.get_object(Bucket="shared-drop", Key="read")["Body"].read() == b"r"
    with pytest.raises(ClientError) as err:
        alice.put_object_acl(Bucket="shared-drop", Key="read", ACL="private")
    assert code(err) == ("AccessDenied", 403)
    alice.put_object_acl(Bucket="shared-drop", Key="full", ACL="private")  # FULL_CONTROL includes WRITE_ACP
    with pytest.raises(ClientError) as err:
        alice.get_object(Bucket="shared-drop", Key="private")
    assert code(err) == ("AccessDenied", 403)
    # written by the bucket owner itself, these are just private
    alice.put_object(Bucket="shared-drop", Key="own", Body=b"o", ACL="bucket-owner-full-control")
    assert grants(alice.get_object_acl(Bucket="shared-drop", Key="own")) == {OWNER_FULL}


def test_grants_to_unknown_accounts_are_refused(walrus: Walrus) -> None:
    s3 = walrus.client()
    s3.create_bucket(Bucket="grants")
    s3.put_object(Bucket="grants", Key="o", Body=b"1")
    s3.put_bucket_acl(Bucket="grants", GrantRead=f'id="{BOB[0]}"', GrantFullControl=f'id="{ALICE[0]}"')
    assert grants(s3.get_bucket_acl(Bucket="grants")) == {OWNER_FULL, (*BOB, "READ")}  # DisplayName filled in
    refused = [
        (lambda: s3.put_bucket_acl(Bucket="grants", GrantRead='id="999999999999"'), ("InvalidArgument", 400)),
        (lambda: s3.put_object_acl(Bucket="grants", Key="o", GrantRead='id="999999999999"'), ("InvalidArgument", 400)),
        (
            lambda: s3.put_object(Bucket="grants", Key="n", Body=b"1", GrantRead='id="999999999999"'),
            ("InvalidArgument", 400),
        ),
        (
            lambda: s3.put_bucket_acl(Bucket="grants", GrantRead='emailAddress="nobody@example.com"'),
            ("UnresolvableGrantByEmailAddress", 400),
        ),
        (
            lambda: s3.put_bucket_acl(
                Bucket="grants",
                AccessControlPolicy={
                    "Owner": {"ID": ALICE[0]},
                    "Grants": [{"Grantee": {"Type": "CanonicalUser", "ID": "999999999999"}, "Permission": "READ"}],
                },
            ),
            ("InvalidArgument", 400),
        ),
        (
            lambda: s3.put_bucket_acl(
                Bucket="grants",
                AccessControlPolicy={
                    "Owner": {"ID": ALICE[0]},
                    "Grants": [
                        {"Grantee": {"Type": "AmazonCustomerByEmail", "EmailAddress": "x@y.z"}, "Permission": "READ"}
                    ],
                },
            ),
            ("UnresolvableGrantByEmailAddress", 400),
        ),
        (lambda: s3.create_bucket(Bucket="grants-new", GrantRead='id="999999999999"'), ("InvalidArgument", 400)),
    ]
    for call, expected in refused:
        with pytest.raises(ClientError) as err:
            call()
        assert code(err) == expected
    # nothing changed
    assert grants(s3.get_bucket_acl(Bucket="grants")) == {OWNER_FULL, (*BOB, "READ")}
    with pytest.raises(ClientError):
        s3.head_object(Bucket="grants", Key="n")


def test_acls_with_awscli(walrus: Walrus, tmp_path: Path) -> None:
    walrus.client().create_bucket(Bucket="acl-cli")
    assert "InvalidArgument" in aws_error(
        walrus, tmp_path, "s3api", "put-bucket-acl", "--bucket", "acl-cli", "--grant-read", 'id="999999999999"'
    )
    assert "UnresolvableGrantByEmailAddress" in aws_error(
        walrus, tmp_path, "s3api", "put-bucket-acl", "--bucket", "acl-cli", "--grant-read", 'emailAddress="a@b.c"'
    )
    aws_ok(walrus, tmp_path, "s3api", "put-bucket-acl", "--bucket", "acl-cli", "--acl", "authenticated-read")
    answer = aws_ok(walrus, tmp_path, "s3api", "get-bucket-acl", "--bucket", "acl-cli")
    assert '"DisplayName": "alice"' in answer and AUTH in answer


@pytest.mark.skipif(shutil.which("s3cmd") is None, reason="s3cmd is installed by deploy/bootstrap.sh")
def test_acls_with_s3cmd(walrus: Walrus, tmp_path: Path) -> None:
    config = s3cmd_config(walrus, tmp_path / "s3cfg", signature_v2=False)
    s3cmd_ok(config, "mb", "s3://acl-s3cmd")
    s3cmd_ok(config, "setacl", f"--acl-grant=read:{BOB[0]}", "s3://acl-s3cmd")
    info = s3cmd_ok(config, "info", "s3://acl-s3cmd")
    assert "bob: READ" in info and "alice: FULL_CONTROL" in info
    assert "InvalidArgument" in s3cmd_error(config, "setacl", "--acl-grant=read:999999999999", "s3://acl-s3cmd")
    s3cmd_ok(config, "setacl", "--acl-public", "s3://acl-s3cmd")
    assert "*anon*: READ" in s3cmd_ok(config, "info", "s3://acl-s3cmd")
