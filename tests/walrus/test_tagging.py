"""Bucket tagging (and, with versions, object tagging) through boto3 and awscli, with S3's errors. s3cmd 2.3 has
no tagging commands (they came in 2.4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.walrus.cli import aws_error, aws_ok
from tests.walrus.conftest import Walrus

pytestmark = pytest.mark.shared_metadata  # also on the shared store (tests/walrus/conftest.py)


def code(excinfo: pytest.ExceptionInfo) -> tuple[str, int]:
    response = excinfo.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def tag_set(pairs: dict[str, str]) -> dict:
    return {"TagSet": [{"Key": k, "Value": v} for k, v in pairs.items()]}


def test_bucket_tagging(walrus: Walrus) -> None:
    s3, bob = walrus.client(), walrus.client("bob")
    s3.create_bucket(Bucket="tagged")
    with pytest.raises(ClientError) as err:
        s3.get_bucket_tagging(Bucket="tagged")
    assert code(err) == ("NoSuchTagSet", 404)
    s3.put_bucket_tagging(Bucket="tagged", Tagging=tag_set({"project": "koala", "cost-centre": "42", "empty": ""}))
    got = {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket="tagged")["TagSet"]}
    assert got == {"project": "koala", "cost-centre": "42", "empty": ""}
    refused = {
        "duplicate key": ([("a", "1"), ("a", "2")], ("InvalidTag", 400)),
        "system tag": ([("aws:created", "x")], ("InvalidTag", 400)),
        "long key": ([("k" * 129, "v")], ("InvalidTag", 400)),
        "long value": ([("k", "v" * 257)], ("InvalidTag", 400)),
        "too many": ([(f"k{i}", "v") for i in range(51)], ("BadRequest", 400)),
    }
    for name, (pairs, expected) in refused.items():
        with pytest.raises(ClientError) as err:
            s3.put_bucket_tagging(Bucket="tagged", Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in pairs]})
        assert code(err) == expected, name
    s3.put_bucket_tagging(Bucket="tagged", Tagging=tag_set({f"k{i}": "v" for i in range(50)}))
    assert len(s3.get_bucket_tagging(Bucket="tagged")["TagSet"]) == 50
    for call in (
        lambda: bob.get_bucket_tagging(Bucket="tagged"),
        lambda: bob.put_bucket_tagging(Bucket="tagged", Tagging=tag_set({"a": "b"})),
        lambda: bob.delete_bucket_tagging(Bucket="tagged"),
    ):
        with pytest.raises(ClientError) as err:
            call()
        assert code(err) == ("AccessDenied", 403)
    with pytest.raises(ClientError) as err:
        s3.put_bucket_tagging(Bucket="no-such-tagged", Tagging=tag_set({"a": "b"}))
    assert code(err) == ("NoSuchBucket", 404)
    s3.delete_bucket_tagging(Bucket="tagged")
    with pytest.raises(ClientError) as err:
        s3.get_bucket_tagging(Bucket="tagged")
    assert code(err) == ("NoSuchTagSet", 404)


def test_bucket_tagging_with_awscli(walrus: Walrus, tmp_path: Path) -> None:
    walrus.client().create_bucket(Bucket="tagged-cli")
    aws_ok(walrus, tmp_path, "s3api", "put-bucket-tagging", "--bucket", "tagged-cli", "--tagging",
           json.dumps(tag_set({"team": "storage"})))  # fmt: skip
    got = json.loads(aws_ok(walrus, tmp_path, "s3api", "get-bucket-tagging", "--bucket", "tagged-cli"))
    assert got["TagSet"] == [{"Key": "team", "Value": "storage"}]
    assert "InvalidTag" in aws_error(walrus, tmp_path, "s3api", "put-bucket-tagging", "--bucket", "tagged-cli",
                                     "--tagging", json.dumps(tag_set({"aws:x": "1"})))  # fmt: skip
    aws_ok(walrus, tmp_path, "s3api", "delete-bucket-tagging", "--bucket", "tagged-cli")
    assert "NoSuchTagSet" in aws_error(walrus, tmp_path, "s3api", "get-bucket-tagging", "--bucket", "tagged-cli")


def tags_of(response: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in response["TagSet"]}


def test_object_tagging(walrus: Walrus) -> None:
    s3, bob = walrus.client(), walrus.client("bob")
    s3.create_bucket(Bucket="obj-tags")
    s3.put_object(Bucket="obj-tags", Key="plain", Body=b"x")
    assert s3.get_object_tagging(Bucket="obj-tags", Key="plain")["TagSet"] == []
    assert "TagCount" not in s3.get_object(Bucket="obj-tags", Key="plain")
    s3.put_object_tagging(Bucket="obj-tags", Key="plain", Tagging=tag_set({"colour": "blue", "empty": ""}))
    assert tags_of(s3.get_object_tagging(Bucket="obj-tags", Key="plain")) == {"colour": "blue", "empty": ""}
    assert (
        s3.head_object(Bucket="obj-tags", Key="plain")["ResponseMetadata"]["HTTPHeaders"]["x-amz-tagging-count"] == "2"
    )
    assert s3.get_object(Bucket="obj-tags", Key="plain")["TagCount"] == 2
    # x-amz-tagging on PutObject, URL-encoded
    s3.put_object(Bucket="obj-tags", Key="headed", Body=b"y", Tagging="a=1&b%20c=d%26e&f=")
    assert tags_of(s3.get_object_tagging(Bucket="obj-tags", Key="headed")) == {"a": "1", "b c": "d&e", "f": ""}
    # ten tags are fine; eleven, long keys and values, duplicates and system tags are refused
    s3.put_object_tagging(Bucket="obj-tags", Key="plain", Tagging=tag_set({f"k{i}": "v" for i in range(10)}))
    refused = {
        "too many": ([(f"k{i}", "v") for i in range(11)], ("BadRequest", 400)),
        "duplicate key": ([("a", "1"), ("a", "2")], ("InvalidTag", 400)),
        "long key": ([("k" * 129, "v")], ("InvalidTag", 400)),
        "long value": ([("k", "v" * 257)], ("InvalidTag", 400)),
        "system tag": ([("aws:x", "1")], ("InvalidTag", 400)),
    }
    for name, (pairs, expected) in refused.items():
        with pytest.raises(ClientError) as err:
            s3.put_object_tagging(Bucket="obj-tags", Key="plain",
                                  Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in pairs]})  # fmt: skip
        assert code(err) == expected, name
        with pytest.raises(ClientError) as err:
            s3.put_object(Bucket="obj-tags", Key="refused", Body=b"z", Tagging="&".join(f"{k}={v}" for k, v in pairs))
        assert code(err) == expected, name
    s3.put_object_tagging(Bucket="obj-tags", Key="plain", Tagging=tag_set({"k" * 128: "v" * 256}))
    assert tags_of(s3.get_object_tagging(Bucket="obj-tags", Key="plain")) == {"k" * 128: "v" * 256}
    with pytest.raises(ClientError) as err:
        s3.head_object(Bucket="obj-tags", Key="refused")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    # missing objects and buckets, strangers
    for call, expected in (
        (lambda: s3.get_object_tagging(Bucket="obj-tags", Key="nope"), ("NoSuchKey", 404)),
        (lambda: s3.put_object_tagging(Bucket="obj-tags", Key="nope", Tagging=tag_set({"a": "b"})), ("NoSuchKey", 404)),
        (lambda: s3.delete_object_tagging(Bucket="obj-tags", Key="nope"), ("NoSuchKey", 404)),
        (lambda: s3.get_object_tagging(Bucket="no-such-obj-tags", Key="x"), ("NoSuchBucket", 404)),
        (lambda: bob.get_object_tagging(Bucket="obj-tags", Key="plain"), ("AccessDenied", 403)),
        (
            lambda: bob.put_object_tagging(Bucket="obj-tags", Key="plain", Tagging=tag_set({"a": "b"})),
            ("AccessDenied", 403),
        ),
        (lambda: bob.delete_object_tagging(Bucket="obj-tags", Key="plain"), ("AccessDenied", 403)),
    ):
        with pytest.raises(ClientError) as err:
            call()
        assert code(err) == expected
    assert tags_of(s3.get_object_tagging(Bucket="obj-tags", Key="plain")) == {"k" * 128: "v" * 256}
    s3.delete_object_tagging(Bucket="obj-tags", Key="plain")
    assert s3.get_object_tagging(Bucket="obj-tags", Key="plain")["TagSet"] == []
    assert (
        "x-amz-tagging-count" not in s3.head_object(Bucket="obj-tags", Key="plain")["ResponseMetadata"]["HTTPHeaders"]
    )


def test_copy_and_multipart_tags(walrus: Walrus) -> None:
    s3 = walrus.client()
    s3.create_bucket(Bucket="copy-tags")
    s3.put_object(Bucket="copy-tags", Key="src", Body=b"data", Tagging="origin=src")
    s3.copy_object(Bucket="copy-tags", Key="kept", CopySource={"Bucket": "copy-tags", "Key": "src"}, Tagging="x=y")
    assert tags_of(s3.get_object_tagging(Bucket="copy-tags", Key="kept")) == {"origin": "src"}
    s3.copy_object(Bucket="copy-tags", Key="replaced", CopySource={"Bucket": "copy-tags", "Key": "src"},
                   TaggingDirective="REPLACE", Tagging="x=y")  # fmt: skip
    assert tags_of(s3.get_object_tagging(Bucket="copy-tags", Key="replaced")) == {"x": "y"}
    s3.copy_object(Bucket="copy-tags", Key="cleared", CopySource={"Bucket": "copy-tags", "Key": "src"},
                   TaggingDirective="REPLACE")  # fmt: skip
    assert s3.get_object_tagging(Bucket="copy-tags", Key="cleared")["TagSet"] == []
    with pytest.raises(ClientError) as err:
        s3.copy_object(Bucket="copy-tags", Key="bad", CopySource={"Bucket": "copy-tags", "Key": "src"},
                       TaggingDirective="REPLACE", Tagging="&".join(f"k{i}=v" for i in range(11)))  # fmt: skip
    assert code(err) == ("BadRequest", 400)
    upload = s3.create_multipart_upload(Bucket="copy-tags", Key="multi", Tagging="stage=upload")["UploadId"]
    part = s3.upload_part(Bucket="copy-tags", Key="multi", UploadId=upload, PartNumber=1, Body=b"p" * 1024)
    s3.complete_multipart_upload(Bucket="copy-tags", Key="multi", UploadId=upload,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})  # fmt: skip
    assert tags_of(s3.get_object_tagging(Bucket="copy-tags", Key="multi")) == {"stage": "upload"}
    assert (
        s3.head_object(Bucket="copy-tags", Key="multi")["ResponseMetadata"]["HTTPHeaders"]["x-amz-tagging-count"] == "1"
    )
    with pytest.raises(ClientError) as err:
        s3.create_multipart_upload(Bucket="copy-tags", Key="multi2", Tagging="aws:x=1")
    assert code(err) == ("InvalidTag", 400)


def test_tags_per_version(walrus: Walrus) -> None:
    s3 = walrus.client()
    s3.create_bucket(Bucket="ver-tags")
    s3.put_bucket_versioning(Bucket="ver-tags", VersioningConfiguration={"Status": "Enabled"})
    v1 = s3.put_object(Bucket="ver-tags", Key="k", Body=b"1", Tagging="gen=1")["VersionId"]
    v2 = s3.put_object(Bucket="ver-tags", Key="k", Body=b"2")["VersionId"]
    assert s3.get_object_tagging(Bucket="ver-tags", Key="k")["TagSet"] == []
    first = s3.get_object_tagging(Bucket="ver-tags", Key="k", VersionId=v1)
    assert tags_of(first) == {"gen": "1"} and first["VersionId"] == v1
    answer = s3.put_object_tagging(Bucket="ver-tags", Key="k", VersionId=v1, Tagging=tag_set({"gen": "one"}))
    assert answer["VersionId"] == v1
    assert tags_of(s3.get_object_tagging(Bucket="ver-tags", Key="k", VersionId=v1)) == {"gen": "one"}
    assert s3.get_object_tagging(Bucket="ver-tags", Key="k", VersionId=v2)["TagSet"] == []
    assert s3.get_object(Bucket="ver-tags", Key="k", VersionId=v1)["TagCount"] == 1
    answer = s3.put_object_tagging(Bucket="ver-tags", Key="k", Tagging=tag_set({"gen": "two"}))
    assert answer["VersionId"] == v2
    assert s3.delete_object_tagging(Bucket="ver-tags", Key="k", VersionId=v1)["VersionId"] == v1
    assert s3.get_object_tagging(Bucket="ver-tags", Key="k", VersionId=v1)["TagSet"] == []
    assert tags_of(s3.get_object_tagging(Bucket="ver-tags", Key="k")) == {"gen": "two"}
    missing = "0" * len(v1)
    for call in (
        lambda: s3.get_object_tagging(Bucket="ver-tags", Key="k", VersionId=missing),
        lambda: s3.put_object_tagging(Bucket="ver-tags", Key="k", VersionId=missing, Tagging=tag_set({"a": "b"})),
        lambda: s3.delete_object_tagging(Bucket="ver-tags", Key="k", VersionId=missing),
    ):
        with pytest.raises(ClientError) as err:
            call()
        assert code(err) == ("NoSuchVersion", 404)
    marker = s3.delete_object(Bucket="ver-tags", Key="k")["VersionId"]
    with pytest.raises(ClientError) as err:
        s3.get_object_tagging(Bucket="ver-tags", Key="k")
    assert code(err) == ("NoSuchKey", 404)
    with pytest.raises(ClientError) as err:
        s3.put_object_tagging(Bucket="ver-tags", Key="k", VersionId=marker, Tagging=tag_set({"a": "b"}))
    assert code(err) == ("MethodNotAllowed", 405)
    assert tags_of(s3.get_object_tagging(Bucket="ver-tags", Key="k", VersionId=v2)) == {"gen": "two"}


def test_object_tagging_with_awscli(walrus: Walrus, tmp_path: Path) -> None:
    walrus.client().create_bucket(Bucket="obj-tags-cli")
    source = tmp_path / "body.txt"
    source.write_bytes(b"hello")
    aws_ok(walrus, tmp_path, "s3api", "put-object", "--bucket", "obj-tags-cli", "--key", "f", "--body", str(source),
           "--tagging", "team=storage")  # fmt: skip
    got = json.loads(aws_ok(walrus, tmp_path, "s3api", "get-object-tagging", "--bucket", "obj-tags-cli", "--key", "f"))
    assert got["TagSet"] == [{"Key": "team", "Value": "storage"}]
    aws_ok(walrus, tmp_path, "s3api", "put-object-tagging", "--bucket", "obj-tags-cli", "--key", "f", "--tagging",
           json.dumps(tag_set({"team": "compute", "tier": "1"})))  # fmt: skip
    fetched = json.loads(aws_ok(walrus, tmp_path, "s3api", "get-object", "--bucket", "obj-tags-cli", "--key", "f",
                                str(tmp_path / "out.txt")))  # fmt: skip
    assert fetched["TagCount"] == 2
    got = json.loads(aws_ok(walrus, tmp_path, "s3api", "get-object-tagging", "--bucket", "obj-tags-cli", "--key", "f"))
    assert {t["Key"]: t["Value"] for t in got["TagSet"]} == {"team": "compute", "tier": "1"}
    assert "InvalidTag" in aws_error(walrus, tmp_path, "s3api", "put-object-tagging", "--bucket", "obj-tags-cli",
                                     "--key", "f", "--tagging", json.dumps(tag_set({"k" * 129: "v"})))  # fmt: skip
    assert "NoSuchKey" in aws_error(walrus, tmp_path, "s3api", "get-object-tagging", "--bucket", "obj-tags-cli",
                                    "--key", "missing")  # fmt: skip
    aws_ok(walrus, tmp_path, "s3api", "delete-object-tagging", "--bucket", "obj-tags-cli", "--key", "f")
    got = json.loads(aws_ok(walrus, tmp_path, "s3api", "get-object-tagging", "--bucket", "obj-tags-cli", "--key", "f"))
    assert got["TagSet"] == []
