"""Access keys resolved through the real CLC's identity interface (no local credentials file)."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.harness import Cloud


def eucarc_values(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            tokens = shlex.split(line[len("export ") :])
            if len(tokens) == 1 and "=" in tokens[0]:
                key, value = tokens[0].split("=", 1)
                values[key] = value
    return values


def client(url: str, access: str, secret: str):
    return boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def test_keys_resolved_by_the_clc(tmp_path: Path) -> None:
    cloud = Cloud(tmp_path / "cloud", roles=("clc", "walrus"))
    try:
        cloud.start()
        eucarc = cloud.dir / "data" / "clc" / "admin" / "eucarc"
        deadline = time.monotonic() + 30
        while not eucarc.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        values = eucarc_values(eucarc)
        admin = client(cloud.url("walrus"), values["EC2_ACCESS_KEY"], values["EC2_SECRET_KEY"])
        admin.create_bucket(Bucket="admin-bucket")
        admin.put_object(Bucket="admin-bucket", Key="k", Body=b"resolved through the CLC")
        assert admin.get_object(Bucket="admin-bucket", Key="k")["Body"].read() == b"resolved through the CLC"
        owner = admin.list_buckets()["Owner"]["ID"]
        assert owner == values.get("EC2_USER_ID", owner)
        with pytest.raises(ClientError) as err:
            client(cloud.url("walrus"), "AKIAUNKNOWNKEY000000", "x").list_buckets()
        assert err.value.response["Error"]["Code"] == "InvalidAccessKeyId"
        with pytest.raises(ClientError) as err:
            client(cloud.url("walrus"), values["EC2_ACCESS_KEY"], "wrong-secret").list_buckets()
        assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    finally:
        cloud.stop()
