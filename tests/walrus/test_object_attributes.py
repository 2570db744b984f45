"""GetObjectAttributes through boto3 and awscli (s3cmd has no such command), with S3's errors: single-PUT and
multipart objects, checksums, part paging, versions, and access."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.walrus.cli import aws_error, aws_ok
from tests.walrus.conftest import Walrus

MiB = 1 << 20
ALL = ["ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"]


def code(excinfo: pytest.ExceptionInfo) -> tuple[str, int]:
    response = excinfo.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def test_get_object_attributes(walrus: Walrus, tmp_path: Path) -> None:
    s3 = walrus.client()
    s3.create_bucket(Bucket="attrs")
    put = s3.put_object(Bucket="attrs", Key="single", Body=b"a" * 1000, ChecksumAlgorithm="SHA256")
    got = s3.get_object_attributes(Bucket="attrs", Key="single", ObjectAttributes=ALL)
    assert got["ETag"] == put["ETag"].strip('"') and got["ObjectSize"] == 1000 and got["StorageClass"] == "STANDARD"
    assert got["Checksum"]["ChecksumSHA256"] == put["ChecksumSHA256"]
    assert "ObjectParts" not in got and "LastModified" in got
    only_size = s3.get_object_attributes(Bucket="attrs", Key="single", ObjectAttributes=["ObjectSize"])
    assert only_size["ObjectSize"] == 1000 and "ETag" not in only_size

    upload = s3.create_multipart_upload(Bucket="attrs", Key="multi")["UploadId"]
    parts = []
    for number, size in ((1, 5 * MiB), (2, 5 * MiB), (3, 1234)):
        etag = s3.upload_part(Bucket="attrs", Key="multi", UploadId=upload, PartNumber=number, Body=b"m" * size)["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    s3.complete_multipart_upload(Bucket="attrs", Key="multi", UploadId=upload, MultipartUpload={"Parts": parts})
    got = s3.get_object_attributes(Bucket="attrs", Key="multi", ObjectAttributes=["ObjectParts", "ETag"], MaxParts=2)
    assert got["ETag"].endswith("-3")
    assert got["ObjectParts"]["TotalPartsCount"] == 3 and got["ObjectParts"]["IsTruncated"] is True
    assert [p["PartNumber"] for p in got["ObjectParts"]["Parts"]] == [1, 2]
    assert got["ObjectParts"]["NextPartNumberMarker"] == 2
    rest = s3.get_object_attributes(Bucket="attrs", Key="multi", ObjectAttributes=["ObjectParts"], PartNumberMarker=2)[
        "ObjectParts"
    ]
    assert rest["Parts"] == [{"PartNumber": 3, "Size": 1234}] and rest["IsTruncated"] is False

    s3.put_bucket_versioning(Bucket="attrs", VersioningConfiguration={"Status": "Enabled"})
    first = s3.put_object(Bucket="attrs", Key="v", Body=b"one")["VersionId"]
    s3.put_object(Bucket="attrs", Key="v", Body=b"three")
    old = s3.get_object_attributes(Bucket="attrs", Key="v", VersionId=first, ObjectAttributes=["ObjectSize"])
    assert old["ObjectSize"] == 3 and old["VersionId"] == first
    assert s3.get_object_attributes(Bucket="attrs", Key="v", ObjectAttributes=["ObjectSize"])["ObjectSize"] == 5

    failures = [
        (lambda: s3.get_object_attributes(Bucket="attrs", Key="missing", ObjectAttributes=["ETag"]),
         ("NoSuchKey", 404)),
        (lambda: s3.get_object_attributes(Bucket="no-such-attrs", Key="k", ObjectAttributes=["ETag"]),
         ("NoSuchBucket", 404)),
        (lambda: walrus.client("bob").get_object_attributes(Bucket="attrs", Key="single", ObjectAttributes=["ETag"]),
         ("AccessDenied", 403)),
        (lambda: s3.get_object_attributes(Bucket="attrs", Key="v", VersionId="nope", ObjectAttributes=["ETag"]),
         ("NoSuchVersion", 404)),
    ]  # fmt: skip
    for call, expected in failures:
        with pytest.raises(ClientError) as err:
            call()
        assert code(err) == expected
    with pytest.raises(ClientError) as err:
        s3.get_object_attributes(Bucket="attrs", Key="single", ObjectAttributes=["Colour"])
    assert code(err) == ("InvalidArgument", 400)

    answer = json.loads(aws_ok(walrus, tmp_path, "s3api", "get-object-attributes", "--bucket", "attrs", "--key",
                               "single", "--object-attributes", "ETag", "ObjectSize"))  # fmt: skip
    assert answer["ObjectSize"] == 1000 and answer["ETag"] == put["ETag"].strip('"')
    assert "NoSuchKey" in aws_error(walrus, tmp_path, "s3api", "get-object-attributes", "--bucket", "attrs", "--key",
                                    "gone", "--object-attributes", "ETag")  # fmt: skip
