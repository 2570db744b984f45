"""Bucket logging: Put/GetBucketLogging through boto3, awscli and s3cmd with S3's errors, and access-log objects
written to the target bucket in S3's server access log format."""

from __future__ import annotations

import shlex
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.walrus.cli import aws_error, aws_ok, s3cmd_config, s3cmd_error, s3cmd_ok
from tests.walrus.conftest import Walrus, start_walrus

ALICE = "111111111111"


@pytest.fixture(scope="module")
def walrus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walrus]:
    instance = start_walrus(tmp_path_factory.mktemp("walrus-logs"), {"KOALA_WALRUS_LOG_FLUSH_SECONDS": "0.5"})
    try:
        yield instance
    finally:
        instance.cloud.stop()


def code(excinfo: pytest.ExceptionInfo) -> tuple[str, int]:
    response = excinfo.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def log_records(s3, bucket: str, prefix: str, wanted: int = 0, until=None) -> list[list[str]]:
    """The records delivered so far under `prefix`, once there are at least `wanted` and one satisfies `until`
    (waits up to 20 s)."""
    deadline = time.monotonic() + 20
    while True:
        records = []
        for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
            text = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().decode()
            records += [shlex.split(line.replace("[", '"[').replace("]", ']"')) for line in text.splitlines()]
        done = len(records) >= wanted and (until is None or any(until(r) for r in records))
        if done or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def test_access_logs_are_delivered(walrus: Walrus) -> None:
    s3 = walrus.client()
    s3.create_bucket(Bucket="logged")
    s3.create_bucket(Bucket="log-target")
    assert s3.get_bucket_logging(Bucket="logged").get("LoggingEnabled") is None
    s3.put_bucket_logging(
        Bucket="logged",
        BucketLoggingStatus={"LoggingEnabled": {"TargetBucket": "log-target", "TargetPrefix": "logs/logged/"}},
    )
    enabled = s3.get_bucket_logging(Bucket="logged")["LoggingEnabled"]
    assert enabled == {"TargetBucket": "log-target", "TargetPrefix": "logs/logged/"}
    s3.put_object(Bucket="logged", Key="dir/a.txt", Body=b"12345")
    s3.get_object(Bucket="logged", Key="dir/a.txt")["Body"].read()
    with pytest.raises(ClientError):
        s3.get_object(Bucket="logged", Key="missing")
    with pytest.raises(ClientError):
        walrus.anonymous().get_object(Bucket="logged", Key="dir/a.txt")
    s3.list_objects_v2(Bucket="logged")
    records = log_records(s3, "log-target", "logs/logged/", 6, until=lambda r: r[6] == "REST.GET.BUCKET")
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket="log-target")["Contents"]]
    assert all(k.startswith("logs/logged/20") and len(k) == len("logs/logged/") + 19 + 1 + 16 for k in keys)
    by_operation = {(r[6], r[7], r[4]): r for r in records}
    put = by_operation[("REST.PUT.OBJECT", "dir/a.txt", ALICE)]
    assert put[0] == ALICE and put[1] == "logged" and put[4] == ALICE and put[9] == "200"
    assert put[8].startswith("PUT /logged/dir/a.txt")
    get = by_operation[("REST.GET.OBJECT", "dir/a.txt", ALICE)]
    assert get[9] == "200" and get[11] == "5"
    assert by_operation[("REST.GET.OBJECT", "missing", ALICE)][9:11] == ["404", "NoSuchKey"]
    assert by_operation[("REST.GET.OBJECT", "dir/a.txt", "-")][9:11] == ["403", "AccessDenied"]  # anonymous
    assert ("REST.GET.BUCKET", "-", ALICE) in by_operation
    # turned off: no more records
    s3.put_bucket_logging(Bucket="logged", BucketLoggingStatus={})
    assert s3.get_bucket_logging(Bucket="logged").get("LoggingEnabled") is None
    before = len(log_records(s3, "log-target", "logs/logged/", 0))
    s3.get_object(Bucket="logged", Key="dir/a.txt")
    time.sleep(1.5)
    assert len(log_records(s3, "log-target", "logs/logged/", 0)) == before


def test_logging_configuration_errors(walrus: Walrus) -> None:
    s3, bob = walrus.client(), walrus.client("bob")
    s3.create_bucket(Bucket="logged-2")
    bob.create_bucket(Bucket="bobs-target")
    cases = [
        ({"TargetBucket": "no-such-target", "TargetPrefix": "x"}, ("InvalidTargetBucketForLogging", 400)),
        ({"TargetBucket": "bobs-target", "TargetPrefix": "x"}, ("InvalidTargetBucketForLogging", 400)),
    ]
    for enabled, expected in cases:
        with pytest.raises(ClientError) as err:
            s3.put_bucket_logging(Bucket="logged-2", BucketLoggingStatus={"LoggingEnabled": enabled})
        assert code(err) == expected
    for call in (
        lambda: bob.get_bucket_logging(Bucket="logged-2"),
        lambda: bob.put_bucket_logging(Bucket="logged-2", BucketLoggingStatus={}),
    ):
        with pytest.raises(ClientError) as err:
            call()
        assert code(err) == ("AccessDenied", 403)
    with pytest.raises(ClientError) as err:
        s3.get_bucket_logging(Bucket="no-such-logged")
    assert code(err) == ("NoSuchBucket", 404)


def test_logging_with_awscli(walrus: Walrus, tmp_path: Path) -> None:
    s3 = walrus.client()
    s3.create_bucket(Bucket="logged-cli")
    status = '{"LoggingEnabled": {"TargetBucket": "logged-cli", "TargetPrefix": "self/"}}'
    aws_ok(walrus, tmp_path, "s3api", "put-bucket-logging", "--bucket", "logged-cli", "--bucket-logging-status", status)
    assert '"TargetPrefix": "self/"' in aws_ok(
        walrus, tmp_path, "s3api", "get-bucket-logging", "--bucket", "logged-cli"
    )
    bad = '{"LoggingEnabled": {"TargetBucket": "nowhere-bucket", "TargetPrefix": "x"}}'
    assert "InvalidTargetBucketForLogging" in aws_error(
        walrus, tmp_path, "s3api", "put-bucket-logging", "--bucket", "logged-cli", "--bucket-logging-status", bad
    )
    aws_ok(walrus, tmp_path, "s3", "cp", __file__, "s3://logged-cli/copied.py")

    def copied(record: list[str]) -> bool:
        return record[6] == "REST.PUT.OBJECT" and record[7] == "copied.py"

    assert any(copied(r) for r in log_records(s3, "logged-cli", "self/", until=copied))


@pytest.mark.skipif(shutil.which("s3cmd") is None, reason="s3cmd is installed by deploy/bootstrap.sh")
def test_logging_with_s3cmd(walrus: Walrus, tmp_path: Path) -> None:
    config = s3cmd_config(walrus, tmp_path / "s3cfg", signature_v2=True)
    s3cmd_ok(config, "mb", "s3://logged-s3cmd")
    s3cmd_ok(config, "mb", "s3://logged-s3cmd-target")
    s3cmd_ok(config, "accesslog", "--access-logging-target-prefix=s3://logged-s3cmd-target/s3cmd/", "s3://logged-s3cmd")
    status = s3cmd_ok(config, "accesslog", "s3://logged-s3cmd")
    assert "logged-s3cmd-target/s3cmd/" in status
    # s3cmd looks the target bucket up itself first
    assert "NoSuchBucket" in s3cmd_error(
        config, "accesslog", "--access-logging-target-prefix=s3://missing-target-s3cmd/x/", "s3://logged-s3cmd"
    )
    s3cmd_ok(config, "put", __file__, "s3://logged-s3cmd/file.py")

    def put(record: list[str]) -> bool:
        return record[6] == "REST.PUT.OBJECT" and record[7] == "file.py" and record[19] == "SigV2"

    assert any(put(r) for r in log_records(walrus.client(), "logged-s3cmd-target", "s3cmd/", until=put))
    s3cmd_ok(config, "accesslog", "--no-access-logging", "s3://logged-s3cmd")
    assert walrus.client().get_bucket_logging(Bucket="logged-s3cmd").get("LoggingEnabled") is None
