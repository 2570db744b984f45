"""awscli and s3cmd run against a test Walrus as a user, for tests that check both success and S3's errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.walrus.conftest import USERS, Walrus

AWS = str(Path(sys.executable).parent / "aws")


def aws_run(walrus: Walrus, home: Path, *args: str, user: str = "alice") -> subprocess.CompletedProcess:
    access, secret, _, _ = USERS[user]
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "AWS_ACCESS_KEY_ID": access,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(home / "aws-config"),
        "AWS_MAX_ATTEMPTS": "1",
    }
    return subprocess.run(
        [AWS, "--endpoint-url", walrus.url, *args], env=env, capture_output=True, text=True, timeout=120
    )


def _told(result: subprocess.CompletedProcess) -> str:
    """What a failed expectation shows: the argv (a value awscli's parser refused is in it) and both outputs."""
    return f"argv {result.args!r} exited {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"


def aws_ok(walrus: Walrus, home: Path, *args: str, user: str = "alice") -> str:
    result = aws_run(walrus, home, *args, user=user)
    assert result.returncode == 0, _told(result)
    return result.stdout


def aws_error(walrus: Walrus, home: Path, *args: str, user: str = "alice") -> str:
    """The stderr of a command that must fail (awscli names S3's error code there)."""
    result = aws_run(walrus, home, *args, user=user)
    assert result.returncode != 0, _told(result)
    return result.stderr


def s3cmd_config(walrus: Walrus, path: Path, signature_v2: bool, user: str = "alice") -> Path:
    access, secret, _, _ = USERS[user]
    host = walrus.url.removeprefix("http://")
    path.write_text(
        "[default]\n"
        f"access_key = {access}\n"
        f"secret_key = {secret}\n"
        f"host_base = {host}\n"
        f"host_bucket = {host}\n"
        "use_https = False\n"
        f"signature_v2 = {signature_v2}\n"
        "bucket_location = us-east-1\n"
        "multipart_chunk_size_mb = 5\n"
        "check_ssl_certificate = False\n"
        "max_retries = 1\n"
    )
    return path


def s3cmd_run(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["s3cmd", "-c", str(config), *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )


def s3cmd_ok(config: Path, *args: str) -> str:
    result = s3cmd_run(config, *args)
    assert result.returncode == 0, _told(result)
    return result.stdout


def s3cmd_error(config: Path, *args: str) -> str:
    result = s3cmd_run(config, *args)
    assert result.returncode != 0, _told(result)
    return result.stdout + result.stderr
