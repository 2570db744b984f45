"""Stock command-line clients against Walrus: awscli (`aws s3 cp/sync/ls/rm`, multipart above 8 MiB) and s3cmd
(Debian package; put/get/ls/del/sync/multipart, SigV2 and SigV4)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from tests.walrus.cli import aws_ok, s3cmd_config, s3cmd_ok
from tests.walrus.conftest import USERS, Walrus

MiB = 1 << 20


def aws(walrus: Walrus, home: Path, *args: str) -> str:
    return aws_ok(walrus, home, *args)


def md5_file(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_awscli_cp_sync_ls_rm(walrus: Walrus, tmp_path: Path) -> None:
    walrus.client().create_bucket(Bucket="awscli")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    big = src / "big.bin"
    big.write_bytes(os.urandom(20 * MiB + 123))  # multipart: 8 MiB parts
    (src / "small.txt").write_bytes(b"small file\n")
    (src / "sub" / "nested.bin").write_bytes(os.urandom(70_000))
    aws(walrus, tmp_path, "s3", "cp", str(big), "s3://awscli/big.bin")
    head = walrus.client().head_object(Bucket="awscli", Key="big.bin")
    assert head["ETag"].endswith('-3"')
    assert head["ContentLength"] == big.stat().st_size
    out = tmp_path / "big.out"
    aws(walrus, tmp_path, "s3", "cp", "s3://awscli/big.bin", str(out))
    assert md5_file(out) == md5_file(big)
    aws(walrus, tmp_path, "s3", "sync", str(src), "s3://awscli/tree")
    listing = aws(walrus, tmp_path, "s3", "ls", "--recursive", "s3://awscli/tree/")
    assert {line.split()[-1] for line in listing.splitlines()} == {
        "tree/big.bin",
        "tree/small.txt",
        "tree/sub/nested.bin",
    }
    # a second sync has nothing to do
    assert aws(walrus, tmp_path, "s3", "sync", str(src), "s3://awscli/tree").strip() == ""
    back = tmp_path / "back"
    aws(walrus, tmp_path, "s3", "sync", "s3://awscli/tree", str(back))
    for name in ("big.bin", "small.txt", "sub/nested.bin"):
        assert md5_file(back / name) == md5_file(src / name)
    aws(walrus, tmp_path, "s3", "rm", "--recursive", "s3://awscli/")
    assert aws(walrus, tmp_path, "s3", "ls", "--recursive", "s3://awscli/").strip() == ""
    aws(walrus, tmp_path, "s3", "rb", "s3://awscli")


def s3cmd(config: Path, *args: str) -> str:
    return s3cmd_ok(config, *args)


@pytest.mark.skipif(shutil.which("s3cmd") is None, reason="s3cmd is installed by deploy/bootstrap.sh")
@pytest.mark.parametrize("signature_v2", [False, True], ids=["sigv4", "sigv2"])
def test_s3cmd(walrus: Walrus, tmp_path: Path, signature_v2: bool) -> None:
    config = s3cmd_config(walrus, tmp_path / "s3cfg", signature_v2)
    bucket = f"s3cmd-{'v2' if signature_v2 else 'v4'}"
    s3cmd(config, "mb", f"s3://{bucket}")
    assert f"s3://{bucket}" in s3cmd(config, "ls")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * MiB + 5))  # 3 parts of 5 MiB chunks
    small = tmp_path / "small name.txt"
    small.write_bytes(b"hello s3cmd\n")
    s3cmd(config, "put", str(big), f"s3://{bucket}/big.bin")
    s3cmd(config, "put", str(small), f"s3://{bucket}/dir/small name.txt")
    assert walrus.client().head_object(Bucket=bucket, Key="big.bin")["ETag"].endswith('-3"')
    listing = s3cmd(config, "ls", "--recursive", f"s3://{bucket}")
    assert "big.bin" in listing and "small name.txt" in listing
    out = tmp_path / "got.bin"
    s3cmd(config, "get", f"s3://{bucket}/big.bin", str(out))
    assert md5_file(out) == md5_file(big)
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    for i in range(5):
        (tree / "a" / f"f{i}").write_bytes(os.urandom(1000 + i))
    s3cmd(config, "sync", str(tree) + "/", f"s3://{bucket}/tree/")
    back = tmp_path / "back"
    back.mkdir()
    s3cmd(config, "sync", f"s3://{bucket}/tree/", str(back) + "/")
    for i in range(5):
        assert md5_file(back / "a" / f"f{i}") == md5_file(tree / "a" / f"f{i}")
    s3cmd(config, "del", "--recursive", "--force", f"s3://{bucket}")
    assert s3cmd(config, "ls", "--recursive", f"s3://{bucket}").strip() == ""
    s3cmd(config, "rb", f"s3://{bucket}")


@pytest.mark.skipif(shutil.which("s3cmd") is None, reason="s3cmd is installed by deploy/bootstrap.sh")
@pytest.mark.parametrize("signature_v2", [False, True], ids=["sigv4", "sigv2"])
def test_s3cmd_virtual_host(walrus: Walrus, tmp_path: Path, signature_v2: bool) -> None:
    """host_bucket = %(bucket)s.localhost: names under localhost do not resolve here, so s3cmd reaches Walrus as
    its HTTP proxy, with the virtual-host Host header."""
    access, secret, _, _ = USERS["alice"]
    port = walrus.url.rsplit(":", 1)[1]
    config = tmp_path / "s3cfg"
    config.write_text(
        "[default]\n"
        f"access_key = {access}\n"
        f"secret_key = {secret}\n"
        f"host_base = localhost:{port}\n"
        f"host_bucket = %(bucket)s.localhost:{port}\n"
        "use_https = False\n"
        f"signature_v2 = {signature_v2}\n"
        "proxy_host = 127.0.0.1\n"
        f"proxy_port = {port}\n"
        "bucket_location = us-east-1\n"
    )
    bucket = f"s3cmd-vhost-{'v2' if signature_v2 else 'v4'}"
    source = tmp_path / "source"
    source.write_bytes(os.urandom(100_000))
    s3cmd(config, "mb", f"s3://{bucket}")
    s3cmd(config, "put", str(source), f"s3://{bucket}/dir/a name")
    assert "s3://" + bucket + "/dir/a name" in s3cmd(config, "ls", "--recursive", f"s3://{bucket}")
    s3cmd(config, "get", f"s3://{bucket}/dir/a name", str(tmp_path / "out"))
    assert md5_file(tmp_path / "out") == md5_file(source)
    s3cmd(config, "del", f"s3://{bucket}/dir/a name")
    s3cmd(config, "rb", f"s3://{bucket}")
