"""Object Lock through boto3, awscli and s3cmd against a real Walrus: buckets created with ObjectLockEnabledForBucket,
default retention, GOVERNANCE and COMPLIANCE retention, legal hold, x-amz-bypass-governance-retention for the
bucket owner only, deletes and changes refused exactly when S3 refuses them, and a locked version that stays
undeletable across a restart."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.walrus.cli import s3cmd_error
from tests.walrus.conftest import Walrus, start_walrus
from tests.walrus.test_cli_clients import aws, s3cmd, s3cmd_config

pytestmark = pytest.mark.shared_metadata  # also on the shared store (tests/walrus/conftest.py)


def error(call, **kwargs) -> tuple[str, int]:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    response = caught.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def later(**delta) -> dt.datetime:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(**delta)).replace(microsecond=0)


def lock_bucket(walrus: Walrus, name: str):
    s3 = walrus.client()
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return s3


def test_bucket_configuration_and_default_retention(walrus: Walrus) -> None:
    s3 = lock_bucket(walrus, "lockcfg")
    assert s3.get_bucket_versioning(Bucket="lockcfg")["Status"] == "Enabled"
    config = s3.get_object_lock_configuration(Bucket="lockcfg")["ObjectLockConfiguration"]
    assert config == {"ObjectLockEnabled": "Enabled"}
    s3.put_object_lock_configuration(
        Bucket="lockcfg",
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 2}},
        },
    )
    rule = s3.get_object_lock_configuration(Bucket="lockcfg")["ObjectLockConfiguration"]["Rule"]
    assert rule == {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 2}}
    version = s3.put_object(Bucket="lockcfg", Key="k", Body=b"x")["VersionId"]
    head = s3.head_object(Bucket="lockcfg", Key="k")
    assert head["ObjectLockMode"] == "GOVERNANCE"
    assert later(days=2) - dt.timedelta(minutes=5) < head["ObjectLockRetainUntilDate"] <= later(days=2, minutes=1)
    assert s3.get_object_retention(Bucket="lockcfg", Key="k", VersionId=version)["Retention"]["Mode"] == "GOVERNANCE"

    # failure paths
    assert error(s3.put_bucket_versioning, Bucket="lockcfg", VersioningConfiguration={"Status": "Suspended"}) == (
        "InvalidBucketState",
        409,
    )
    bad_rule = {"ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 0}}}
    assert error(s3.put_object_lock_configuration, Bucket="lockcfg", ObjectLockConfiguration=bad_rule) == (
        "InvalidArgument",
        400,
    )
    both = {"ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1, "Years": 1}}}
    assert error(s3.put_object_lock_configuration, Bucket="lockcfg", ObjectLockConfiguration=both) == (
        "MalformedXML",
        400,
    )
    assert error(walrus.client("bob").get_object_lock_configuration, Bucket="lockcfg") == ("AccessDenied", 403)
    s3.create_bucket(Bucket="plain-nolock")
    assert error(s3.get_object_lock_configuration, Bucket="plain-nolock") == (
        "ObjectLockConfigurationNotFoundError",
        404,
    )
    enable = {"ObjectLockEnabled": "Enabled"}
    assert error(s3.put_object_lock_configuration, Bucket="plain-nolock", ObjectLockConfiguration=enable) == (
        "InvalidBucketState",
        409,
    )
    retention = {"Mode": "GOVERNANCE", "RetainUntilDate": later(days=1)}
    s3.put_object(Bucket="plain-nolock", Key="k", Body=b"x")
    assert error(s3.put_object_retention, Bucket="plain-nolock", Key="k", Retention=retention) == (
        "InvalidRequest",
        400,
    )
    assert error(
        s3.put_object,
        Bucket="plain-nolock",
        Key="k2",
        Body=b"x",
        ObjectLockMode="GOVERNANCE",
        ObjectLockRetainUntilDate=later(days=1),
    ) == ("InvalidRequest", 400)


def test_governance_compliance_and_legal_hold(walrus: Walrus) -> None:
    s3 = lock_bucket(walrus, "lockrules")
    governed = s3.put_object(
        Bucket="lockrules", Key="g", Body=b"g", ObjectLockMode="GOVERNANCE", ObjectLockRetainUntilDate=later(days=1)
    )["VersionId"]
    assert error(s3.delete_object, Bucket="lockrules", Key="g", VersionId=governed) == ("AccessDenied", 403)
    # a delete marker is always allowed; the locked version stays
    assert s3.delete_object(Bucket="lockrules", Key="g")["DeleteMarker"] is True
    assert s3.get_object(Bucket="lockrules", Key="g", VersionId=governed)["Body"].read() == b"g"
    # shortening GOVERNANCE needs the bypass; the owner may bypass, bob (granted write) may not
    shorter = {"Mode": "GOVERNANCE", "RetainUntilDate": later(hours=1)}
    assert error(s3.put_object_retention, Bucket="lockrules", Key="g", VersionId=governed, Retention=shorter) == (
        "AccessDenied",
        403,
    )
    s3.put_bucket_acl(
        Bucket="lockrules",
        GrantFullControl='id="111111111111"',
        GrantWrite='id="222222222222"',
        GrantRead='id="222222222222"',
    )
    bob = walrus.client("bob")
    assert error(
        bob.delete_object, Bucket="lockrules", Key="g", VersionId=governed, BypassGovernanceRetention=True
    ) == ("AccessDenied", 403)
    s3.delete_object(Bucket="lockrules", Key="g", VersionId=governed, BypassGovernanceRetention=True)
    assert error(s3.get_object, Bucket="lockrules", Key="g", VersionId=governed) == ("NoSuchVersion", 404)

    until = later(days=1)
    complied = s3.put_object(
        Bucket="lockrules", Key="c", Body=b"c", ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=until
    )["VersionId"]
    assert error(s3.delete_object, Bucket="lockrules", Key="c", VersionId=complied, BypassGovernanceRetention=True) == (
        "AccessDenied",
        403,
    )
    weaker = {"Mode": "GOVERNANCE", "RetainUntilDate": later(days=2)}
    assert error(
        s3.put_object_retention,
        Bucket="lockrules",
        Key="c",
        VersionId=complied,
        Retention=weaker,
        BypassGovernanceRetention=True,
    ) == ("AccessDenied", 403)
    longer = {"Mode": "COMPLIANCE", "RetainUntilDate": later(days=3)}
    s3.put_object_retention(Bucket="lockrules", Key="c", VersionId=complied, Retention=longer)
    got = s3.get_object_retention(Bucket="lockrules", Key="c", VersionId=complied)["Retention"]
    assert got["Mode"] == "COMPLIANCE" and got["RetainUntilDate"] == longer["RetainUntilDate"]

    held = s3.put_object(Bucket="lockrules", Key="h", Body=b"h", ObjectLockLegalHoldStatus="ON")["VersionId"]
    assert s3.get_object_legal_hold(Bucket="lockrules", Key="h")["LegalHold"]["Status"] == "ON"
    assert s3.head_object(Bucket="lockrules", Key="h")["ObjectLockLegalHoldStatus"] == "ON"
    assert error(s3.delete_object, Bucket="lockrules", Key="h", VersionId=held, BypassGovernanceRetention=True) == (
        "AccessDenied",
        403,
    )
    result = s3.delete_objects(Bucket="lockrules", Delete={"Objects": [{"Key": "h", "VersionId": held}]})
    assert result["Errors"][0]["Code"] == "AccessDenied"
    s3.put_object_legal_hold(Bucket="lockrules", Key="h", VersionId=held, LegalHold={"Status": "OFF"})
    s3.delete_object(Bucket="lockrules", Key="h", VersionId=held)

    past = {"Mode": "GOVERNANCE", "RetainUntilDate": later(days=-1)}
    assert error(s3.put_object_retention, Bucket="lockrules", Key="c", Retention=past) == ("InvalidArgument", 400)
    assert error(s3.put_object_legal_hold, Bucket="lockrules", Key="c", LegalHold={"Status": "MAYBE"}) == (
        "MalformedXML",
        400,
    )
    assert error(s3.get_object_retention, Bucket="lockrules", Key="nothing-here") == ("NoSuchKey", 404)
    assert error(s3.delete_bucket, Bucket="lockrules") == ("BucketNotEmpty", 409)


def test_lock_uploads_need_an_integrity_header(walrus: Walrus) -> None:
    """As AWS requires: a PutObject that sets Object Lock (its headers, or the bucket's default retention) and an
    UploadPart of such an upload carry Content-MD5 or an x-amz-checksum; without one, InvalidRequest and nothing
    stored. A client that computes checksums only when an operation requires them shows it."""
    setup = lock_bucket(walrus, "lockmd5")
    bare = walrus.client(request_checksum_calculation="when_required")  # no checksum unless asked for
    hold = {"Bucket": "lockmd5", "ObjectLockLegalHoldStatus": "ON", "Body": b"held"}
    assert error(bare.put_object, Key="bare", **hold) == ("InvalidRequest", 400)
    assert error(setup.head_object, Bucket="lockmd5", Key="bare") == ("404", 404)
    md5 = base64.b64encode(hashlib.md5(b"held").digest()).decode()
    assert bare.put_object(Key="md5", ContentMD5=md5, **hold)["VersionId"]
    assert bare.put_object(Key="sha", ChecksumAlgorithm="SHA256", **hold)["VersionId"]
    assert setup.put_object(Key="sdk", **hold)["VersionId"]  # boto3's default: a CRC32 of the body
    bare.put_object(Bucket="lockmd5", Key="free", Body=b"no lock, no default retention")  # needs nothing
    retained = {"Bucket": "lockmd5", "ObjectLockMode": "GOVERNANCE", "ObjectLockRetainUntilDate": later(days=1)}
    assert error(bare.put_object, Key="ret", Body=b"r", **retained) == ("InvalidRequest", 400)

    upload = bare.create_multipart_upload(Key="mp", **retained)["UploadId"]
    part = {"Bucket": "lockmd5", "Key": "mp", "UploadId": upload, "PartNumber": 1, "Body": b"p"}
    assert error(bare.upload_part, **part) == ("InvalidRequest", 400)
    assert bare.upload_part(ContentMD5=base64.b64encode(hashlib.md5(b"p").digest()).decode(), **part)["ETag"]

    setup.put_object_lock_configuration(
        Bucket="lockmd5",
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
        },
    )
    assert error(bare.put_object, Bucket="lockmd5", Key="default", Body=b"d") == ("InvalidRequest", 400)
    assert bare.put_object(Bucket="lockmd5", Key="default", Body=b"d", ChecksumAlgorithm="CRC32")["VersionId"]


def test_awscli_object_lock(walrus: Walrus, tmp_path: Path) -> None:
    aws(walrus, tmp_path, "s3api", "create-bucket", "--bucket", "awslock", "--object-lock-enabled-for-bucket")
    config = json.loads(aws(walrus, tmp_path, "s3api", "get-object-lock-configuration", "--bucket", "awslock"))
    assert config["ObjectLockConfiguration"]["ObjectLockEnabled"] == "Enabled"
    source = tmp_path / "f"
    source.write_text("locked")
    put = json.loads(
        aws(
            walrus,
            tmp_path,
            "s3api",
            "put-object",
            "--bucket",
            "awslock",
            "--key",
            "f",
            "--body",
            str(source),
            "--object-lock-mode",
            "COMPLIANCE",
            "--object-lock-retain-until-date",
            later(days=1).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
    )
    retention = json.loads(
        aws(
            walrus,
            tmp_path,
            "s3api",
            "get-object-retention",
            "--bucket",
            "awslock",
            "--key",
            "f",
            f"--version-id={put['VersionId']}",  # one argument: a value from a response is never taken for an option
        )
    )
    assert retention["Retention"]["Mode"] == "COMPLIANCE"


@pytest.mark.skipif(shutil.which("s3cmd") is None, reason="s3cmd is installed by deploy/bootstrap.sh")
def test_s3cmd_in_a_locked_bucket(walrus: Walrus, tmp_path: Path) -> None:
    """s3cmd has no Object Lock commands; in a bucket whose default retention locks what it uploads, its put gets
    the retention, its del only hides the object behind a delete marker, and the bucket cannot be removed."""
    s3 = lock_bucket(walrus, "s3cmdlock")
    default = {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}}
    s3.put_object_lock_configuration(
        Bucket="s3cmdlock", ObjectLockConfiguration={"ObjectLockEnabled": "Enabled", "Rule": default}
    )
    config = s3cmd_config(walrus, tmp_path / "s3cfg", signature_v2=False)
    source = tmp_path / "f"
    source.write_text("kept")
    # a locked upload needs an integrity header, which s3cmd sends only when asked (as on S3)
    assert "InvalidRequest" in s3cmd_error(config, "put", str(source), "s3://s3cmdlock/f")
    md5 = base64.b64encode(hashlib.md5(b"kept").digest()).decode()
    s3cmd(config, "put", f"--add-header=Content-MD5:{md5}", str(source), "s3://s3cmdlock/f")
    head = s3.head_object(Bucket="s3cmdlock", Key="f")
    assert head["ObjectLockMode"] == "GOVERNANCE" and head["ObjectLockRetainUntilDate"] > later(hours=23)
    s3cmd(config, "del", "s3://s3cmdlock/f")
    assert error(s3.head_object, Bucket="s3cmdlock", Key="f")[1] == 404  # a delete marker on top
    kept = s3.get_object(Bucket="s3cmdlock", Key="f", VersionId=head["VersionId"])["Body"].read()
    assert kept == b"kept"
    assert error(s3.delete_object, Bucket="s3cmdlock", Key="f", VersionId=head["VersionId"]) == ("AccessDenied", 403)
    assert "BucketNotEmpty" in s3cmd_error(config, "rb", "s3://s3cmdlock")


def test_locked_version_survives_restart(tmp_path: Path) -> None:
    walrus = start_walrus(tmp_path)
    try:
        s3 = lock_bucket(walrus, "lockrestart")
        version = s3.put_object(
            Bucket="lockrestart",
            Key="k",
            Body=b"forever",
            ObjectLockMode="COMPLIANCE",
            ObjectLockRetainUntilDate=later(days=1),
        )["VersionId"]
        walrus.cloud.kill("walrus")
        walrus.cloud.start("walrus")
        s3 = walrus.client()
        assert error(
            s3.delete_object, Bucket="lockrestart", Key="k", VersionId=version, BypassGovernanceRetention=True
        ) == ("AccessDenied", 403)
        assert s3.get_object(Bucket="lockrestart", Key="k", VersionId=version)["Body"].read() == b"forever"
        walrus.cloud.stop("walrus")
        walrus.cloud.start("walrus")
        assert error(walrus.client().delete_object, Bucket="lockrestart", Key="k", VersionId=version) == (
            "AccessDenied",
            403,
        )
    finally:
        walrus.cloud.stop()
