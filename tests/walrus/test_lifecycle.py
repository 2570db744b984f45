"""Bucket lifecycle through boto3, awscli and s3cmd against a real Walrus whose lifecycle "day" is one second and
whose sweep runs every 0.3 s: the configuration's checks and errors, and the background expiration of current
versions, noncurrent versions, expired delete markers and incomplete multipart uploads, with Object Lock
outranking lifecycle; and a kill -9 in the middle of a sweep."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.walrus.cli import aws_error, s3cmd_error
from tests.walrus.conftest import Walrus, start_walrus
from tests.walrus.test_cli_clients import aws, s3cmd, s3cmd_config

FAST = {"KOALA_WALRUS_LIFECYCLE_DAY": "1", "KOALA_WALRUS_LIFECYCLE_INTERVAL": "0.3"}


@pytest.fixture(scope="module")
def walrus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walrus]:
    instance = start_walrus(tmp_path_factory.mktemp("walrus-lifecycle"), FAST)
    try:
        yield instance
    finally:
        instance.cloud.stop()


def error(call, **kwargs) -> tuple[str, int]:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    response = caught.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def eventually(check: Callable[[], bool], timeout: float = 30.0, pause: float = 0.2) -> bool:
    """Poll a background effect; True once `check` holds (the caller asserts on it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(pause)
    return check()


def versions(s3, bucket: str, prefix: str = "") -> list[tuple[str, str, bool]]:
    """(key, version id, is delete marker) of every version, by key then newest first."""
    found = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        found += [(v["Key"], v["VersionId"], False, v["LastModified"]) for v in page.get("Versions", [])]
        found += [(m["Key"], m["VersionId"], True, m["LastModified"]) for m in page.get("DeleteMarkers", [])]
    found.sort(key=lambda v: (v[0], -v[3].timestamp()))
    return [v[:3] for v in found]


def rule(rule_id: str, prefix: str = "", **actions) -> dict:
    return {"ID": rule_id, "Filter": {"Prefix": prefix}, "Status": "Enabled", **actions}


def test_configuration_round_trip_and_errors(walrus: Walrus) -> None:
    s3 = walrus.client()
    s3.create_bucket(Bucket="lcconf")
    assert error(s3.get_bucket_lifecycle_configuration, Bucket="lcconf") == ("NoSuchLifecycleConfiguration", 404)
    rules = [
        rule("logs", "logs/", Expiration={"Days": 30}, NoncurrentVersionExpiration={"NoncurrentDays": 7}),
        {
            "ID": "big",
            "Filter": {"And": {"Prefix": "tmp/", "ObjectSizeGreaterThan": 1000}},
            "Status": "Disabled",
            "Expiration": {"Date": dt.datetime(2030, 1, 1, tzinfo=dt.UTC)},
        },
        rule("markers", Expiration={"ExpiredObjectDeleteMarker": True}),
        rule("uploads", AbortIncompleteMultipartUpload={"DaysAfterInitiation": 2}),
    ]
    s3.put_bucket_lifecycle_configuration(Bucket="lcconf", LifecycleConfiguration={"Rules": rules})
    got = s3.get_bucket_lifecycle_configuration(Bucket="lcconf")["Rules"]
    assert [r["ID"] for r in got] == ["logs", "big", "markers", "uploads"]
    assert got[0]["Expiration"] == {"Days": 30} and got[0]["Filter"] == {"Prefix": "logs/"}
    assert got[0]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 7}
    assert got[1]["Filter"]["And"] == {"Prefix": "tmp/", "ObjectSizeGreaterThan": 1000}
    assert got[1]["Status"] == "Disabled" and got[1]["Expiration"]["Date"].year == 2030
    assert got[2]["Expiration"] == {"ExpiredObjectDeleteMarker": True}
    assert got[3]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 2}

    put = s3.put_bucket_lifecycle_configuration

    def refused(*bad: dict) -> tuple[str, int]:
        return error(put, Bucket="lcconf", LifecycleConfiguration={"Rules": list(bad)})

    assert refused(rule("zero", Expiration={"Days": 0})) == ("InvalidArgument", 400)
    noon = dt.datetime(2030, 1, 1, 12, tzinfo=dt.UTC)
    assert refused(rule("noon", Expiration={"Date": noon})) == ("InvalidArgument", 400)
    assert refused(rule("both", Expiration={"Days": 1, "ExpiredObjectDeleteMarker": True})) == ("MalformedXML", 400)
    assert refused(rule("same", Expiration={"Days": 1}), rule("same", Expiration={"Days": 2})) == (
        "InvalidArgument",
        400,
    )
    assert refused({"ID": "none", "Filter": {"Prefix": ""}, "Status": "Enabled"}) == ("InvalidRequest", 400)
    tagged = {"ID": "tag", "Filter": {"Tag": {"Key": "a", "Value": "b"}}, "Status": "Enabled"}
    assert refused({**tagged, "Expiration": {"ExpiredObjectDeleteMarker": True}}) == ("InvalidRequest", 400)
    assert refused({**tagged, "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}) == ("InvalidRequest", 400)
    twice = {"And": {"Tags": [{"Key": "a", "Value": "b"}, {"Key": "a", "Value": "c"}]}}
    assert refused({**tagged, "Filter": twice, "Expiration": {"Days": 1}}) == ("InvalidArgument", 400)
    long_key = {"Tag": {"Key": "k" * 129, "Value": "v"}}
    assert refused({**tagged, "Filter": long_key, "Expiration": {"Days": 1}}) == ("InvalidTag", 400)
    # one storage class: a transition is refused as S3 refuses a class its bucket cannot hold
    assert refused(rule("glacier", Transitions=[{"Days": 1, "StorageClass": "GLACIER"}])) == (
        "InvalidStorageClass",
        400,
    )
    older = {"NoncurrentDays": 30, "StorageClass": "STANDARD_IA"}
    assert refused(rule("ia", NoncurrentVersionTransitions=[older])) == ("InvalidStorageClass", 400)
    assert refused(rule("x" * 300, Expiration={"Days": 1})) == ("InvalidArgument", 400)
    bob = walrus.client("bob")
    assert error(bob.get_bucket_lifecycle_configuration, Bucket="lcconf") == ("AccessDenied", 403)
    assert error(
        bob.put_bucket_lifecycle_configuration,
        Bucket="lcconf",
        LifecycleConfiguration={"Rules": [rule("r", Expiration={"Days": 1})]},
    ) == ("AccessDenied", 403)
    assert len(s3.get_bucket_lifecycle_configuration(Bucket="lcconf")["Rules"]) == 4  # refusals changed nothing
    s3.delete_bucket_lifecycle(Bucket="lcconf")
    assert error(s3.get_bucket_lifecycle_configuration, Bucket="lcconf") == ("NoSuchLifecycleConfiguration", 404)


def test_tag_filters(walrus: Walrus) -> None:
    """A rule filtered on tags (one Tag, or And with a prefix and several tags) round-trips and expires only the
    objects that carry every tag it names; in a versioned bucket it reads each noncurrent version's own tags."""
    s3 = walrus.client()
    s3.create_bucket(Bucket="lctags")
    s3.put_object(Bucket="lctags", Key="tmp/both", Body=b"x", Tagging="class=scratch&team=a")
    s3.put_object(Bucket="lctags", Key="tmp/one", Body=b"x", Tagging="class=scratch")
    s3.put_object(Bucket="lctags", Key="tmp/none", Body=b"x")
    s3.put_object(Bucket="lctags", Key="keep/both", Body=b"x", Tagging="class=scratch&team=a")
    s3.put_object(Bucket="lctags", Key="any/single", Body=b"x", Tagging="gone=yes")
    s3.put_object(Bucket="lctags", Key="any/other", Body=b"x", Tagging="gone=no")
    both = {"Prefix": "tmp/", "Tags": [{"Key": "class", "Value": "scratch"}, {"Key": "team", "Value": "a"}]}
    rules = [
        {"ID": "and", "Filter": {"And": both}, "Status": "Enabled", "Expiration": {"Days": 1}},
        {
            "ID": "tag",
            "Filter": {"Tag": {"Key": "gone", "Value": "yes"}},
            "Status": "Enabled",
            "Expiration": {"Days": 1},
        },
    ]
    s3.put_bucket_lifecycle_configuration(Bucket="lctags", LifecycleConfiguration={"Rules": rules})
    got = s3.get_bucket_lifecycle_configuration(Bucket="lctags")["Rules"]
    assert got[0]["Filter"] == {"And": both} and got[1]["Filter"] == {"Tag": {"Key": "gone", "Value": "yes"}}

    def keys() -> list[str]:
        return sorted(o["Key"] for o in s3.list_objects_v2(Bucket="lctags").get("Contents", []))

    assert eventually(lambda: keys() == ["any/other", "keep/both", "tmp/none", "tmp/one"]), keys()

    s3.create_bucket(Bucket="lctagv")
    s3.put_bucket_versioning(Bucket="lctagv", VersioningConfiguration={"Status": "Enabled"})
    tagged = s3.put_object(Bucket="lctagv", Key="k", Body=b"1", Tagging="old=drop")["VersionId"]
    plain = s3.put_object(Bucket="lctagv", Key="k", Body=b"2")["VersionId"]
    current = s3.put_object(Bucket="lctagv", Key="k", Body=b"3", Tagging="old=drop")["VersionId"]
    s3.put_bucket_lifecycle_configuration(
        Bucket="lctagv",
        LifecycleConfiguration={
            "Rules": [
                {
                    "ID": "non",
                    "Filter": {"Tag": {"Key": "old", "Value": "drop"}},
                    "Status": "Enabled",
                    "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
                }
            ]
        },
    )
    assert eventually(lambda: [v[1] for v in versions(s3, "lctagv")] == [current, plain])
    assert error(s3.get_object, Bucket="lctagv", Key="k", VersionId=tagged) == ("NoSuchVersion", 404)


def test_current_versions_expire(walrus: Walrus) -> None:
    s3 = walrus.client()
    s3.create_bucket(Bucket="lcplain")
    for key in ("tmp/a", "tmp/b", "keep/c"):
        s3.put_object(Bucket="lcplain", Key=key, Body=b"x")
    s3.put_bucket_lifecycle_configuration(
        Bucket="lcplain", LifecycleConfiguration={"Rules": [rule("tmp", "tmp/", Expiration={"Days": 2})]}
    )
    assert eventually(
        lambda: [o["Key"] for o in s3.list_objects_v2(Bucket="lcplain").get("Contents", [])] == ["keep/c"]
    )
    assert versions(s3, "lcplain") == [("keep/c", "null", False)]  # unversioned: expired objects are gone

    s3.create_bucket(Bucket="lccur")
    s3.put_bucket_versioning(Bucket="lccur", VersioningConfiguration={"Status": "Enabled"})
    kept = s3.put_object(Bucket="lccur", Key="k", Body=b"x")["VersionId"]
    s3.put_bucket_lifecycle_configuration(
        Bucket="lccur", LifecycleConfiguration={"Rules": [rule("all", Expiration={"Days": 1})]}
    )
    # versioned: the current version expires behind a delete marker and stays as a noncurrent version
    assert eventually(lambda: [v[2] for v in versions(s3, "lccur")] == [True, False])
    assert versions(s3, "lccur")[1][1] == kept
    assert s3.get_object(Bucket="lccur", Key="k", VersionId=kept)["Body"].read() == b"x"
    time.sleep(1.5)  # several more sweeps: still one marker, the kept version untouched
    assert [v[2] for v in versions(s3, "lccur")] == [True, False]


def test_noncurrent_versions_and_expired_markers(walrus: Walrus) -> None:
    s3 = walrus.client()
    s3.create_bucket(Bucket="lcnon")
    s3.put_bucket_versioning(Bucket="lcnon", VersioningConfiguration={"Status": "Enabled"})
    ids = [s3.put_object(Bucket="lcnon", Key="k", Body=str(n).encode())["VersionId"] for n in range(4)]
    s3.delete_object(Bucket="lcnon", Key="gone")  # a marker alone from the start
    old = s3.put_object(Bucket="lcnon", Key="old", Body=b"old")["VersionId"]
    s3.delete_object(Bucket="lcnon", Key="old")
    s3.put_bucket_lifecycle_configuration(
        Bucket="lcnon",
        LifecycleConfiguration={
            "Rules": [
                rule("non", "k", NoncurrentVersionExpiration={"NoncurrentDays": 1, "NewerNoncurrentVersions": 1}),
                rule("oldnon", "old", NoncurrentVersionExpiration={"NoncurrentDays": 1}),
                rule("markers", Expiration={"ExpiredObjectDeleteMarker": True}),
            ]
        },
    )
    # k keeps its current version and the newest noncurrent one; "gone" and "old" vanish entirely (old's
    # version expires as noncurrent, its marker is then an expired delete marker)
    expected = [("k", ids[3], False), ("k", ids[2], False)]
    assert eventually(lambda: versions(s3, "lcnon") == expected), versions(s3, "lcnon")
    assert error(s3.get_object, Bucket="lcnon", Key="old", VersionId=old) == ("NoSuchVersion", 404)


def test_object_lock_outranks_lifecycle(walrus: Walrus) -> None:
    s3 = walrus.client()
    s3.create_bucket(Bucket="lclock", ObjectLockEnabledForBucket=True)
    until = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    locked = s3.put_object(
        Bucket="lclock", Key="locked", Body=b"l", ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=until
    )["VersionId"]
    free = s3.put_object(Bucket="lclock", Key="free", Body=b"f")["VersionId"]
    s3.put_object(Bucket="lclock", Key="locked", Body=b"l2")
    s3.put_object(Bucket="lclock", Key="free", Body=b"f2")
    s3.put_bucket_lifecycle_configuration(
        Bucket="lclock",
        LifecycleConfiguration={"Rules": [rule("non", NoncurrentVersionExpiration={"NoncurrentDays": 1})]},
    )
    assert eventually(lambda: free not in [v[1] for v in versions(s3, "lclock", "free")])
    time.sleep(1)
    assert locked in [v[1] for v in versions(s3, "lclock", "locked")]


def test_incomplete_uploads_are_aborted(walrus: Walrus) -> None:
    s3 = walrus.client()
    s3.create_bucket(Bucket="lcmp")
    stale = s3.create_multipart_upload(Bucket="lcmp", Key="up/big")["UploadId"]
    s3.upload_part(Bucket="lcmp", Key="up/big", UploadId=stale, PartNumber=1, Body=b"p" * 1000)
    other = s3.create_multipart_upload(Bucket="lcmp", Key="elsewhere")["UploadId"]
    s3.put_bucket_lifecycle_configuration(
        Bucket="lcmp",
        LifecycleConfiguration={
            "Rules": [rule("mp", "up/", AbortIncompleteMultipartUpload={"DaysAfterInitiation": 1})]
        },
    )

    def uploads() -> list[str]:
        return [u["UploadId"] for u in s3.list_multipart_uploads(Bucket="lcmp").get("Uploads", [])]

    assert eventually(lambda: uploads() == [other])
    assert error(s3.list_parts, Bucket="lcmp", Key="up/big", UploadId=stale) == ("NoSuchUpload", 404)


def test_awscli_lifecycle(walrus: Walrus, tmp_path: Path) -> None:
    walrus.client().create_bucket(Bucket="lcaws")
    config = tmp_path / "lifecycle.json"
    config.write_text(json.dumps({"Rules": [rule("aws", "a/", Expiration={"Days": 5})]}))
    aws(
        walrus,
        tmp_path,
        "s3api",
        "put-bucket-lifecycle-configuration",
        "--bucket",
        "lcaws",
        "--lifecycle-configuration",
        f"file://{config}",
    )
    got = json.loads(aws(walrus, tmp_path, "s3api", "get-bucket-lifecycle-configuration", "--bucket", "lcaws"))
    assert got["Rules"][0]["ID"] == "aws" and got["Rules"][0]["Expiration"] == {"Days": 5}
    aws(walrus, tmp_path, "s3api", "delete-bucket-lifecycle", "--bucket", "lcaws")
    assert error(walrus.client().get_bucket_lifecycle_configuration, Bucket="lcaws")[1] == 404


@pytest.mark.skipif(shutil.which("s3cmd") is None, reason="s3cmd is installed by deploy/bootstrap.sh")
def test_s3cmd_lifecycle(walrus: Walrus, tmp_path: Path) -> None:
    s3 = walrus.client()
    s3.create_bucket(Bucket="lcs3cmd")
    s3.put_object(Bucket="lcs3cmd", Key="old/x", Body=b"x")
    config = s3cmd_config(walrus, tmp_path / "s3cfg", signature_v2=False)
    policy = tmp_path / "lifecycle.xml"
    policy.write_text(
        "<LifecycleConfiguration><Rule><ID>s3cmd</ID><Prefix>old/</Prefix><Status>Enabled</Status>"
        "<Expiration><Days>1</Days></Expiration></Rule></LifecycleConfiguration>"
    )
    s3cmd(config, "setlifecycle", str(policy), "s3://lcs3cmd")
    assert "<ID>s3cmd</ID>" in s3cmd(config, "getlifecycle", "s3://lcs3cmd")
    assert eventually(lambda: "Contents" not in s3.list_objects_v2(Bucket="lcs3cmd"))
    s3cmd(config, "dellifecycle", "s3://lcs3cmd")
    assert error(s3.get_bucket_lifecycle_configuration, Bucket="lcs3cmd")[1] == 404


def test_one_storage_class(walrus: Walrus, tmp_path: Path) -> None:
    """Walrus keeps objects in STANDARD only: asking for it works, any other class is InvalidStorageClass (400)
    through boto3, awscli and s3cmd, nothing is stored under a class the client did not ask for, and RestoreObject
    is refused as S3 refuses it for a STANDARD object."""
    s3 = walrus.client()
    s3.create_bucket(Bucket="classes")
    s3.put_object(Bucket="classes", Key="std", Body=b"x", StorageClass="STANDARD")
    assert "StorageClass" not in s3.head_object(Bucket="classes", Key="std")  # S3 names no class for STANDARD
    assert s3.list_objects_v2(Bucket="classes")["Contents"][0]["StorageClass"] == "STANDARD"
    assert error(s3.put_object, Bucket="classes", Key="cold", Body=b"x", StorageClass="GLACIER") == (
        "InvalidStorageClass",
        400,
    )
    assert error(s3.create_multipart_upload, Bucket="classes", Key="ia", StorageClass="STANDARD_IA") == (
        "InvalidStorageClass",
        400,
    )
    copy = {"Bucket": "classes", "Key": "copy", "CopySource": {"Bucket": "classes", "Key": "std"}}
    assert error(s3.copy_object, **copy, StorageClass="REDUCED_REDUNDANCY") == ("InvalidStorageClass", 400)
    body = tmp_path / "body.txt"
    body.write_text("x")
    assert "InvalidStorageClass" in aws_error(
        walrus, tmp_path, "s3", "cp", str(body), "s3://classes/aws", "--storage-class", "DEEP_ARCHIVE"
    )
    if shutil.which("s3cmd") is not None:
        config = s3cmd_config(walrus, tmp_path / "s3cfg", signature_v2=False)
        assert "InvalidStorageClass" in s3cmd_error(
            config, "put", "--storage-class=ONEZONE_IA", str(body), "s3://classes/s3cmd"
        )
        s3cmd(config, "put", "--storage-class=STANDARD", str(body), "s3://classes/s3cmd")
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket="classes")["Contents"]) == (
        ["s3cmd", "std"] if shutil.which("s3cmd") else ["std"]
    )
    # RestoreObject: nothing is archived, so S3's answer for a STANDARD object, once the object is there
    restore = {"Bucket": "classes", "RestoreRequest": {"Days": 1}}
    assert error(s3.restore_object, Key="std", **restore) == ("InvalidObjectState", 403)
    assert error(s3.restore_object, Key="missing", **restore) == ("NoSuchKey", 404)
    assert error(walrus.client("bob").restore_object, Key="std", **restore) == ("AccessDenied", 403)
    assert "InvalidObjectState" in aws_error(
        walrus,
        tmp_path,
        "s3api",
        "restore-object",
        "--bucket",
        "classes",
        "--key",
        "std",
        "--restore-request",
        "Days=1",
    )


def visible_after_kill(walrus: Walrus) -> int:
    """How many objects the killed Walrus had left visible, read from its database (the service is down)."""
    db = sqlite3.connect(walrus.cloud.dir / "data" / "walrus" / "objects" / "walrus.db")
    try:
        return db.execute("SELECT COUNT(*) FROM versions WHERE latest = 1 AND delete_marker = 0").fetchone()[0]
    finally:
        db.close()


def test_kill_during_a_sweep(tmp_path: Path) -> None:
    """kill -9 while a sweep hides hundreds of versioned objects behind delete markers: after the restart the
    sweep finishes the job, every key gets exactly one marker, no version's data is lost, other keys untouched."""
    walrus = start_walrus(tmp_path, {"KOALA_WALRUS_LIFECYCLE_DAY": "1", "KOALA_WALRUS_LIFECYCLE_INTERVAL": "2"})
    try:
        s3 = walrus.client()
        s3.create_bucket(Bucket="sweep")
        s3.put_bucket_versioning(Bucket="sweep", VersioningConfiguration={"Status": "Enabled"})
        count = 600
        originals = {}
        for n in range(count):
            originals[f"old/{n:04d}"] = s3.put_object(Bucket="sweep", Key=f"old/{n:04d}", Body=str(n).encode())[
                "VersionId"
            ]
        s3.put_object(Bucket="sweep", Key="keep/x", Body=b"keep")
        s3.put_bucket_lifecycle_configuration(
            Bucket="sweep", LifecycleConfiguration={"Rules": [rule("old", "old/", Expiration={"Days": 1})]}
        )

        def visible() -> int:
            return sum(len(p.get("Contents", [])) for p in s3.get_paginator("list_objects_v2").paginate(Bucket="sweep"))

        def first_hidden() -> bool:  # the sweep goes in key order: old/0000 hidden means it has begun
            try:
                s3.head_object(Bucket="sweep", Key="old/0000")
            except ClientError:
                return True
            return False

        assert eventually(first_hidden, timeout=60, pause=0.02)
        walrus.cloud.kill("walrus")  # mid-sweep: some keys have their marker, others not yet
        hidden_at_kill = count + 1 - visible_after_kill(walrus)
        assert 0 < hidden_at_kill < count, "the kill did not land inside the sweep"
        walrus.cloud.start("walrus")
        s3 = walrus.client()
        assert eventually(lambda: visible() == 1, timeout=90)
        found = versions(s3, "sweep")
        for key, version in originals.items():
            mine = [v for v in found if v[0] == key]
            assert [m for _, _, m in mine] == [True, False], f"{key}: {mine}"
            assert mine[1][1] == version
        assert s3.get_object(Bucket="sweep", Key="old/0007", VersionId=originals["old/0007"])["Body"].read() == b"7"
        assert s3.get_object(Bucket="sweep", Key="keep/x")["Body"].read() == b"keep"
        objects_dir = walrus.cloud.dir / "data" / "walrus" / "objects"
        data_files = [p for p in (objects_dir / "data").rglob("*") if p.is_file()]
        assert data_files == []  # every version here is small enough to live in the database
    finally:
        walrus.cloud.stop()
