"""The durability and convergence harness: kill -9 loops over S3 writes and over launches, with every
acknowledgement tracked and checked after the last restart. Used by the short CI test (test_durability.py) and the
longer benchmark (bench/durability_bench.py), which print the same figures.

S3: writers PUT objects of random bytes (each key written once) while Walrus is killed and restarted; afterwards
every acknowledged object must read back byte for byte (else `lost` or `corrupted`), an unacknowledged one may be
missing but never wrong, and once every object is deleted no data file may remain (`leaked`).

Launches: RunInstances (and some terminations) while the CLC, the CC and the NC are killed and restarted in turn;
afterwards every acknowledged instance must still be known to the EC2 API (else `lost`); then everything is
terminated and `converge_seconds` is how long until the API shows no live instance, the zone's whole capacity is
free again and the NC holds no instance directory (what is left then is `leaked`).
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tests.harness import Cloud

QUICK = Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10)


@dataclass
class Figures:
    acknowledged: int = 0
    attempted: int = 0
    lost: int = 0
    corrupted: int = 0
    leaked: int = 0
    kills: int = 0
    converge_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        figures = asdict(self)
        figures["problems"] = self.problems[:20]
        return figures


def _options(cloud: Cloud) -> dict:
    rc = cloud.admin_credentials()
    return {
        "aws_access_key_id": rc["EC2_ACCESS_KEY"],
        "aws_secret_access_key": rc["EC2_SECRET_KEY"],
        "region_name": "eucalyptus",
        "config": QUICK,
    }


def s3_client(cloud: Cloud):
    return boto3.client("s3", endpoint_url=cloud.url("walrus"), **_options(cloud))


def ec2_client(cloud: Cloud):
    return boto3.client("ec2", endpoint_url=cloud.url("clc"), **_options(cloud))


def _kill_loop(
    cloud: Cloud, roles: list[str], seconds: float, every: float, stop: threading.Event, min_kills: int = 0
) -> int:
    """Kill -9 and restart `roles` in turn every `every` seconds (jittered) for `seconds`, and on until at least
    `min_kills` kills (a restart on a loaded machine can take most of the run); the number of kills."""
    rng = random.Random()
    kills, deadline = 0, time.monotonic() + seconds
    while True:
        pause = every * (0.5 + rng.random())
        if time.monotonic() + pause > deadline and kills >= min_kills:
            time.sleep(max(deadline - time.monotonic(), 0))
            break
        time.sleep(pause)
        role = roles[kills % len(roles)]
        cloud.kill(role)
        kills += 1
        cloud.start(role)
    stop.set()
    return kills


def _retry(action: Callable[[], object], seconds: float = 60.0) -> object:
    """For the checks after the loop: a service that just restarted may refuse a moment."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return action()
        except (BotoCoreError, ClientError) as err:
            code = getattr(err, "response", {}).get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404") or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def s3_under_kills(
    cloud: Cloud, seconds: float, every: float, writers: int = 4, bucket: str = "durable", min_kills: int = 0
) -> Figures:
    figures = Figures()
    s3 = s3_client(cloud)
    data_dir = cloud.dir / "data" / "walrus" / "objects" / "data"
    before = _data_files(data_dir)  # other buckets' objects (a registered image's bundle) are not ours to count
    _retry(lambda: s3.create_bucket(Bucket=bucket))
    acked: dict[str, str] = {}  # key -> sha256 of what was acknowledged
    attempted: dict[str, str] = {}  # every key tried, acknowledged or not
    lock = threading.Lock()
    stop = threading.Event()

    def writer(number: int) -> None:
        client = s3_client(cloud)
        sequence = 0
        while not stop.is_set():
            sequence += 1
            key = f"w{number}/{sequence:06d}"
            body = os.urandom(random.randint(1, 64 << 10))
            digest = hashlib.sha256(body).hexdigest()
            with lock:
                attempted[key] = digest
            try:
                client.put_object(Bucket=bucket, Key=key, Body=body)
            except (BotoCoreError, ClientError):
                time.sleep(0.05)  # Walrus is down or restarting: not acknowledged
                continue
            with lock:
                acked[key] = digest

    with ThreadPoolExecutor(writers) as pool:
        for number in range(writers):
            pool.submit(writer, number)
        figures.kills = _kill_loop(cloud, ["walrus"], seconds, every, stop, min_kills)
    # One more crash after the last acknowledgement, then every object is read back.
    cloud.kill("walrus")
    cloud.start("walrus")
    figures.acknowledged, figures.attempted = len(acked), len(attempted)
    for key, digest in attempted.items():
        try:
            data = _retry(lambda key=key: s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        except ClientError as err:
            if err.response["Error"]["Code"] in ("NoSuchKey", "404") and key in acked:
                figures.lost += 1
                figures.problems.append(f"lost {key}")
            continue
        if hashlib.sha256(data).hexdigest() != digest:  # type: ignore[arg-type]
            figures.corrupted += 1
            figures.problems.append(f"corrupted {key} ({'acknowledged' if key in acked else 'unacknowledged'})")
    # Everything deleted, nothing may stay on disk.
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            _retry(lambda item=item: s3.delete_object(Bucket=bucket, Key=item["Key"]))
    _retry(lambda: s3.delete_bucket(Bucket=bucket))
    deadline = time.monotonic() + 10  # a deleted object's file goes when its last reader closes
    while True:
        left = _data_files(data_dir) - before
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    figures.leaked = len(left)
    figures.problems += [f"leaked {name}" for name in sorted(left)[:5]]
    return figures


def _data_files(data_dir: Path) -> set[str]:
    return {p.name for p in data_dir.rglob("*") if p.is_file()} if data_dir.exists() else set()


def _live(ec2) -> dict[str, str]:
    found = {}
    for page in ec2.get_paginator("describe_instances").paginate():
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                found[instance["InstanceId"]] = instance["State"]["Name"]
    return found


def _capacity(ec2, vm: str = "m1.small") -> tuple[int, int]:
    rows = ec2.describe_availability_zones(ZoneNames=["verbose"])["AvailabilityZones"]
    state = next(r["State"] for r in rows if r["ZoneName"] == f"|- {vm}")
    free, _, most = state.split()[:3]
    return int(free), int(most)


def _instance_dirs(cloud: Cloud) -> list[Path]:
    root = cloud.dir / "data" / "nc-node1" / "instances"
    return [d for d in root.glob("*/i-*") if d.is_dir()] if root.exists() else []


def launches_under_kills(
    cloud: Cloud, image: str, seconds: float, every: float, launchers: int = 2, min_kills: int = 0
) -> Figures:
    figures = Figures()
    acked: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def launcher() -> None:
        ec2 = ec2_client(cloud)
        rng = random.Random()
        while not stop.is_set():
            try:
                with lock:
                    figures.attempted += 1
                answer = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=rng.randint(1, 2))
                ids = [i["InstanceId"] for i in answer["Instances"]]
                with lock:
                    acked.update(ids)
                if rng.random() < 0.7:  # most go again soon, so the zone has room for more launches
                    time.sleep(rng.random() * 0.5)
                    ec2.terminate_instances(InstanceIds=ids)
            except (BotoCoreError, ClientError):
                time.sleep(0.1)  # a service is down, or the zone is full: not acknowledged

    with ThreadPoolExecutor(launchers) as pool:
        for _ in range(launchers):
            pool.submit(launcher)
        figures.kills = _kill_loop(cloud, ["clc", "cc", "nc"], seconds, every, stop, min_kills)
    figures.acknowledged = len(acked)
    ec2 = ec2_client(cloud)
    known = _retry(lambda: _live(ec2))
    missing = acked - set(known)  # type: ignore[arg-type]
    figures.lost = len(missing)
    figures.problems += [f"lost {i}" for i in sorted(missing)]
    # Everything terminated: how long until the cloud is back to empty?
    started = time.monotonic()
    live = [i for i, state in known.items() if state not in ("terminated", "shutting-down")]  # type: ignore[union-attr]
    for chunk in range(0, len(live), 50):
        _retry(lambda chunk=chunk: ec2.terminate_instances(InstanceIds=live[chunk : chunk + 50]))
    deadline = started + 120
    while True:
        states = _retry(lambda: _live(ec2))
        busy = [i for i, s in states.items() if s != "terminated"]  # type: ignore[union-attr]
        free, most = _retry(lambda: _capacity(ec2))  # type: ignore[misc]
        dirs = _instance_dirs(cloud)
        if (not busy and free == most and not dirs) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    figures.converge_seconds = round(time.monotonic() - started, 2)
    figures.leaked = len(busy) + len(dirs) + (most - free)
    figures.problems += [f"not terminated {i}" for i in busy] + [f"instance directory {d.name}" for d in dirs]
    if free != most:
        figures.problems.append(f"capacity {free} of {most} free")
    return figures
