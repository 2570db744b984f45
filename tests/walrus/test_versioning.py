"""Bucket versioning through boto3, awscli and s3cmd against a real Walrus: version ids, delete markers, null
versions when suspended, ListObjectVersions paging and delimiters, versionId on GET/HEAD/DELETE/CopyObject/
UploadPartCopy, multipart uploads and DeleteObjects with versions, and the S3 errors of each failure path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.walrus.conftest import Walrus
from tests.walrus.test_cli_clients import aws, s3cmd, s3cmd_config

pytestmark = pytest.mark.shared_metadata  # also on the shared store (tests/walrus/conftest.py)

MiB = 1 << 20


def error(call, **kwargs) -> tuple[str, int, dict]:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    response = caught.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"], response


def body(s3, bucket: str, key: str, **kwargs) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key, **kwargs)["Body"].read()


def versioned_bucket(walrus: Walrus, name: str):
    s3 = walrus.client()
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return s3


def test_versions_markers_and_versioned_reads(walrus: Walrus) -> None:
    s3 = walrus.client()
    s3.create_bucket(Bucket="ver")
    assert "Status" not in s3.get_bucket_versioning(Bucket="ver")
    before = s3.put_object(Bucket="ver", Key="doc", Body=b"before")
    assert "VersionId" not in before  # versioning never enabled: no version header
    s3.put_bucket_versioning(Bucket="ver", VersioningConfiguration={"Status": "Enabled"})
    assert s3.get_bucket_versioning(Bucket="ver")["Status"] == "Enabled"
    v1 = s3.put_object(Bucket="ver", Key="doc", Body=b"one")["VersionId"]
    v2 = s3.put_object(Bucket="ver", Key="doc", Body=b"two")["VersionId"]
    assert len({v1, v2, "null"}) == 3

    assert body(s3, "ver", "doc") == b"two"
    assert body(s3, "ver", "doc", VersionId=v1) == b"one"
    assert body(s3, "ver", "doc", VersionId="null") == b"before"
    head = s3.head_object(Bucket="ver", Key="doc", VersionId=v1)
    assert head["VersionId"] == v1 and head["ContentLength"] == 3
    assert s3.get_object(Bucket="ver", Key="doc")["VersionId"] == v2

    deleted = s3.delete_object(Bucket="ver", Key="doc")
    assert deleted["DeleteMarker"] is True
    marker = deleted["VersionId"]
    code, status, response = error(s3.get_object, Bucket="ver", Key="doc")
    assert (code, status) == ("NoSuchKey", 404)
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amz-delete-marker"] == "true" and headers["x-amz-version-id"] == marker
    code, status, _ = error(s3.head_object, Bucket="ver", Key="doc", VersionId=marker)
    assert status == 405
    assert (error(s3.get_object, Bucket="ver", Key="doc", VersionId="nope")[:2]) == ("NoSuchVersion", 404)
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="ver").get("Contents", [])] == []

    listed = s3.list_object_versions(Bucket="ver")
    assert [(v["VersionId"], v["IsLatest"]) for v in listed["Versions"]] == [(v2, False), (v1, False), ("null", False)]
    assert [(m["VersionId"], m["IsLatest"]) for m in listed["DeleteMarkers"]] == [(marker, True)]
    assert listed["DeleteMarkers"][0]["Owner"]["ID"] == "111111111111"

    # deleting the marker by id brings v2 back; deleting a version by id removes it for good
    removed = s3.delete_object(Bucket="ver", Key="doc", VersionId=marker)
    assert removed["DeleteMarker"] is True and removed["VersionId"] == marker
    assert body(s3, "ver", "doc") == b"two"
    assert s3.delete_object(Bucket="ver", Key="doc", VersionId=v2)["VersionId"] == v2
    assert body(s3, "ver", "doc") == b"one"
    assert error(s3.get_object, Bucket="ver", Key="doc", VersionId=v2)[:2] == ("NoSuchVersion", 404)

    assert error(s3.delete_bucket, Bucket="ver")[:2] == ("BucketNotEmpty", 409)


def test_suspended_writes_null_versions(walrus: Walrus) -> None:
    s3 = versioned_bucket(walrus, "suspend")
    kept = s3.put_object(Bucket="suspend", Key="k", Body=b"kept")["VersionId"]
    s3.put_bucket_versioning(Bucket="suspend", VersioningConfiguration={"Status": "Suspended"})
    assert s3.get_bucket_versioning(Bucket="suspend")["Status"] == "Suspended"
    assert s3.put_object(Bucket="suspend", Key="k", Body=b"n1")["VersionId"] == "null"
    assert s3.put_object(Bucket="suspend", Key="k", Body=b"n2")["VersionId"] == "null"
    versions = s3.list_object_versions(Bucket="suspend")["Versions"]
    assert [(v["VersionId"], v["IsLatest"]) for v in versions] == [("null", True), (kept, False)]
    assert body(s3, "suspend", "k", VersionId="null") == b"n2"
    deleted = s3.delete_object(Bucket="suspend", Key="k")
    assert deleted["DeleteMarker"] is True and deleted["VersionId"] == "null"
    listed = s3.list_object_versions(Bucket="suspend")
    assert [v["VersionId"] for v in listed["Versions"]] == [kept]  # the null object was replaced by the marker
    assert [m["VersionId"] for m in listed["DeleteMarkers"]] == ["null"]


def test_list_object_versions_paging_and_delimiter(walrus: Walrus) -> None:
    s3 = versioned_bucket(walrus, "paging")
    expected = []
    for key in ("a", "dir/x", "dir/y", "z"):
        ids = [s3.put_object(Bucket="paging", Key=key, Body=key.encode())["VersionId"] for _ in range(3)]
        expected += [(key, v) for v in reversed(ids)]
    s3.delete_object(Bucket="paging", Key="z")
    marker_id = s3.list_object_versions(Bucket="paging", Prefix="z")["DeleteMarkers"][0]["VersionId"]
    expected.insert(9, ("z", marker_id))

    seen, kwargs, pages = [], {}, 0
    while True:
        page = s3.list_object_versions(Bucket="paging", MaxKeys=4, **kwargs)
        pages += 1
        entries = page.get("Versions", []) + page.get("DeleteMarkers", [])
        entries.sort(key=lambda e: expected.index((e["Key"], e["VersionId"])))
        seen += [(e["Key"], e["VersionId"]) for e in entries]
        if not page["IsTruncated"]:
            break
        kwargs = {"KeyMarker": page["NextKeyMarker"], "VersionIdMarker": page["NextVersionIdMarker"]}
    assert seen == expected and pages == 4

    grouped = s3.list_object_versions(Bucket="paging", Delimiter="/")
    assert [p["Prefix"] for p in grouped["CommonPrefixes"]] == ["dir/"]
    assert {v["Key"] for v in grouped["Versions"]} == {"a", "z"}
    paginator = s3.get_paginator("list_object_versions")
    total = sum(
        len(p.get("Versions", [])) for p in paginator.paginate(Bucket="paging", PaginationConfig={"PageSize": 5})
    )
    assert total == 12

    code, status, _ = error(s3.list_object_versions, Bucket="paging", VersionIdMarker=expected[0][1])
    assert (code, status) == ("InvalidArgument", 400)  # a version marker needs a key marker


def test_copy_and_multipart_with_versions(walrus: Walrus) -> None:
    s3 = versioned_bucket(walrus, "copyver")
    old = s3.put_object(Bucket="copyver", Key="src", Body=b"old" * 2 * MiB)["VersionId"]
    s3.put_object(Bucket="copyver", Key="src", Body=b"new")
    copied = s3.copy_object(
        Bucket="copyver", Key="dst", CopySource={"Bucket": "copyver", "Key": "src", "VersionId": old}
    )
    assert copied["CopySourceVersionId"] == old and copied["VersionId"] not in (old, "null")
    assert body(s3, "copyver", "dst") == b"old" * 2 * MiB
    # restoring an old version over the current one is a copy onto itself
    restored = s3.copy_object(
        Bucket="copyver", Key="src", CopySource={"Bucket": "copyver", "Key": "src", "VersionId": old}
    )
    assert body(s3, "copyver", "src") == b"old" * 2 * MiB
    assert body(s3, "copyver", "src", VersionId=restored["VersionId"]) == b"old" * 2 * MiB

    upload = s3.create_multipart_upload(Bucket="copyver", Key="mp")["UploadId"]
    part1 = s3.upload_part_copy(
        Bucket="copyver",
        Key="mp",
        UploadId=upload,
        PartNumber=1,
        CopySource={"Bucket": "copyver", "Key": "src", "VersionId": old},
        CopySourceRange=f"bytes=0-{5 * MiB}",
    )
    assert part1["CopySourceVersionId"] == old
    part2 = s3.upload_part(Bucket="copyver", Key="mp", UploadId=upload, PartNumber=2, Body=b"tail")
    done = s3.complete_multipart_upload(
        Bucket="copyver",
        Key="mp",
        UploadId=upload,
        MultipartUpload={
            "Parts": [
                {"PartNumber": 1, "ETag": part1["CopyPartResult"]["ETag"]},
                {"PartNumber": 2, "ETag": part2["ETag"]},
            ]
        },
    )
    assert len(done["VersionId"]) == 32
    first = s3.put_object(Bucket="copyver", Key="mp", Body=b"after")["VersionId"]
    assert body(s3, "copyver", "mp", VersionId=done["VersionId"]) == (b"old" * 2 * MiB)[: 5 * MiB + 1] + b"tail"
    assert first != done["VersionId"]

    missing = {"Bucket": "copyver", "Key": "src", "VersionId": "no-such-version"}
    assert error(s3.copy_object, Bucket="copyver", Key="x", CopySource=missing)[:2] == ("NoSuchVersion", 404)


def test_delete_objects_with_versions(walrus: Walrus) -> None:
    s3 = versioned_bucket(walrus, "bulkver")
    ids = [s3.put_object(Bucket="bulkver", Key="k", Body=str(n).encode())["VersionId"] for n in range(3)]
    result = s3.delete_objects(
        Bucket="bulkver",
        Delete={"Objects": [{"Key": "k", "VersionId": ids[0]}, {"Key": "k", "VersionId": ids[1]}, {"Key": "other"}]},
    )
    deleted = {(d["Key"], d.get("VersionId")): d for d in result["Deleted"]}
    assert ("k", ids[0]) in deleted and ("k", ids[1]) in deleted
    assert deleted[("other", None)]["DeleteMarker"] is True and deleted[("other", None)]["DeleteMarkerVersionId"]
    assert [v["VersionId"] for v in s3.list_object_versions(Bucket="bulkver", Prefix="k")["Versions"]] == [ids[2]]

    bob = walrus.client("bob")
    refused = bob.delete_objects(Bucket="bulkver", Delete={"Objects": [{"Key": "k", "VersionId": ids[2]}]})
    assert refused["Errors"][0]["Code"] == "AccessDenied" and refused["Errors"][0]["VersionId"] == ids[2]


def test_versioning_failure_paths(walrus: Walrus) -> None:
    s3 = walrus.client()
    s3.create_bucket(Bucket="verfail")
    put = s3.put_bucket_versioning
    assert error(put, Bucket="verfail", VersioningConfiguration={"Status": "Bogus"})[:2] == ("MalformedXML", 400)
    bob = walrus.client("bob")
    assert error(bob.put_bucket_versioning, Bucket="verfail", VersioningConfiguration={"Status": "Enabled"})[:2] == (
        "AccessDenied",
        403,
    )
    assert error(bob.get_bucket_versioning, Bucket="verfail")[:2] == ("AccessDenied", 403)
    assert error(put, Bucket="no-such-bucket", VersioningConfiguration={"Status": "Enabled"})[:2] == (
        "NoSuchBucket",
        404,
    )
    assert error(bob.list_object_versions, Bucket="verfail")[:2] == ("AccessDenied", 403)
    # MFA delete: Koala's accounts have no MFA device, so turning it on fails as S3 fails it without one
    mfa_on = {"Status": "Enabled", "MFADelete": "Enabled"}
    code, status, response = error(put, Bucket="verfail", VersioningConfiguration=mfa_on)
    assert (code, status, response["Error"]["Message"]) == (
        "AccessDenied",
        403,
        "Mfa Authentication must be used for this request",
    )
    assert error(put, Bucket="verfail", VersioningConfiguration=mfa_on, MFA="arn:aws:iam::1:mfa/root 123456")[:2] == (
        "AccessDenied",
        403,
    )
    assert "Status" not in s3.get_bucket_versioning(Bucket="verfail")  # nothing changed
    put(Bucket="verfail", VersioningConfiguration={"Status": "Suspended", "MFADelete": "Disabled"})
    assert s3.get_bucket_versioning(Bucket="verfail")["Status"] == "Suspended"
    s3.put_object(Bucket="verfail", Key="k", Body=b"x")
    # a version id too long to be one is refused; a well-formed one that does not exist is NoSuchVersion
    assert error(s3.get_object, Bucket="verfail", Key="k", VersionId="v" * 2000)[:2] == ("InvalidArgument", 400)
    assert error(s3.get_object, Bucket="verfail", Key="k", VersionId="A" * 32)[:2] == ("NoSuchVersion", 404)


def test_awscli_versions(walrus: Walrus, tmp_path: Path) -> None:
    walrus.client().create_bucket(Bucket="awsver")
    aws(
        walrus,
        tmp_path,
        "s3api",
        "put-bucket-versioning",
        "--bucket",
        "awsver",
        "--versioning-configuration",
        "Status=Enabled",
    )
    assert json.loads(aws(walrus, tmp_path, "s3api", "get-bucket-versioning", "--bucket", "awsver"))["Status"] == (
        "Enabled"
    )
    source = tmp_path / "f.txt"
    for text in ("first", "second"):
        source.write_text(text)
        aws(walrus, tmp_path, "s3", "cp", str(source), "s3://awsver/f.txt")
    aws(walrus, tmp_path, "s3", "rm", "s3://awsver/f.txt")
    listed = json.loads(aws(walrus, tmp_path, "s3api", "list-object-versions", "--bucket", "awsver"))
    assert len(listed["Versions"]) == 2 and len(listed["DeleteMarkers"]) == 1
    oldest = listed["Versions"][-1]["VersionId"]
    out = tmp_path / "out.txt"
    aws(
        walrus,
        tmp_path,
        "s3api",
        "get-object",
        "--bucket",
        "awsver",
        "--key",
        "f.txt",
        f"--version-id={oldest}",  # one argument: a value from a response is never taken for an option
        str(out),
    )
    assert out.read_text() == "first"
    marker = listed["DeleteMarkers"][0]["VersionId"]
    aws(walrus, tmp_path, "s3api", "delete-object", "--bucket", "awsver", "--key", "f.txt", f"--version-id={marker}")
    aws(walrus, tmp_path, "s3", "cp", "s3://awsver/f.txt", str(out))
    assert out.read_text() == "second"


@pytest.mark.skipif(shutil.which("s3cmd") is None, reason="s3cmd is installed by deploy/bootstrap.sh")
def test_s3cmd_in_a_versioned_bucket(walrus: Walrus, tmp_path: Path) -> None:
    s3 = versioned_bucket(walrus, "s3cmdver")
    config = s3cmd_config(walrus, tmp_path / "s3cfg", signature_v2=False)
    source = tmp_path / "f.bin"
    for text in (b"one", b"two"):
        source.write_bytes(text)
        s3cmd(config, "put", str(source), "s3://s3cmdver/f.bin")
    s3cmd(config, "get", "--force", "s3://s3cmdver/f.bin", str(tmp_path / "got.bin"))
    assert (tmp_path / "got.bin").read_bytes() == b"two"
    s3cmd(config, "del", "s3://s3cmdver/f.bin")
    assert "f.bin" not in s3cmd(config, "ls", "s3://s3cmdver")
    listed = s3.list_object_versions(Bucket="s3cmdver")
    assert len(listed["Versions"]) == 2 and len(listed["DeleteMarkers"]) == 1
