"""Bucket tagging (and, with versions, object tagging) through boto3 and awscli, with S3's errors. s3cmd 2.3 has
no tagging commands (they came in 2.4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.walrus.cli import aws_error, aws_ok
from tests.walrus.conftest import Walrus


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
