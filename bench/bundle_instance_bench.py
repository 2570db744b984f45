"""BundleInstance against bundling the same disk file by hand, in one run, on real processes (CLC, Walrus, CC, NC on
libvirt's test driver):

- baseline: `koala bundle-image` + `koala upload-bundle` of a disk file (half random, half zeros: a used disk).
- bundle_instance: that file registered and launched; BundleInstance -> DescribeBundleTasks says complete (the
  node snapshots the root disk, bundles, uploads the parts; the CLC signs and stores the manifest), polled every
  50 ms. Target: baseline seconds / bundle_instance seconds >= 0.8.

    .venv/bin/python bench/bundle_instance_bench.py [--size-mb 1024] [--rounds 2]
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3
from botocore.config import Config

from tests.harness import Cloud

TARGET_RATIO = 0.8


def koala(env: dict[str, str], *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode:
        raise SystemExit(f"koala {args[0]} failed: {done.stdout}\n{done.stderr}")


def make_disk(path: Path, size: int) -> None:
    with path.open("wb") as out:
        block = 4 << 20
        for offset in range(0, size, block):
            out.write(os.urandom(block) if offset < size // 2 else bytes(block))
        out.truncate(size)


def storage(rc: dict[str, str], bucket: str, prefix: str) -> dict:
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    document = json.dumps({"expiration": expires, "conditions": [{"bucket": bucket}, ["starts-with", "$key", prefix]]})
    raw = document.encode()
    signature = hmac.new(rc["EC2_SECRET_KEY"].encode(), base64.b64encode(raw), hashlib.sha1).digest()
    return {
        "S3": {
            "Bucket": bucket,
            "Prefix": prefix,
            "AWSAccessKeyId": rc["EC2_ACCESS_KEY"],
            "UploadPolicy": raw,
            "UploadPolicySignature": base64.b64encode(signature).decode(),
        }
    }


def wait(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    size = args.size_mb << 20
    with tempfile.TemporaryDirectory(prefix="bundle-instance-bench-") as tmp:
        work = Path(tmp)
        cloud = Cloud(work / "cloud", extra={"clc": {}, "cc": {}})
        cloud.start()
        try:
            rc = cloud.admin_credentials()
            env = {**os.environ, **rc}
            ec2 = boto3.client(
                "ec2",
                endpoint_url=rc["EC2_URL"],
                region_name="eucalyptus",
                aws_access_key_id=rc["EC2_ACCESS_KEY"],
                aws_secret_access_key=rc["EC2_SECRET_KEY"],
            )
            s3 = boto3.client(
                "s3",
                endpoint_url=rc["S3_URL"],
                region_name="eucalyptus",
                aws_access_key_id=rc["EC2_ACCESS_KEY"],
                aws_secret_access_key=rc["EC2_SECRET_KEY"],
                config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
            )
            disk = work / "disk.img"
            make_disk(disk, size)
            by_hand, by_instance = [], []
            for round_ in range(args.rounds):
                bundle_dir = work / f"hand{round_}"
                started = time.perf_counter()
                koala(env, "bundle-image", "-i", str(disk), "-d", str(bundle_dir), "-p", f"hand{round_}")
                koala(env, "upload-bundle", "-b", "bench-hand", "-m", str(bundle_dir / f"hand{round_}.manifest.xml"))
                by_hand.append(time.perf_counter() - started)
                if round_ == 0:
                    instance_id = launch(ec2, "bench-hand/hand0.manifest.xml")
                    s3.create_bucket(Bucket="bench-instance")
                for path in bundle_dir.iterdir():
                    path.unlink()
                started = time.perf_counter()
                task = ec2.bundle_instance(
                    InstanceId=instance_id, Storage=storage(rc, "bench-instance", f"inst{round_}")
                )["BundleTask"]
                bundle_id = task["BundleId"]
                final = wait(lambda b=bundle_id: _final(ec2, b), 3600, "the bundle task")
                by_instance.append(time.perf_counter() - started)
                if final["State"] != "complete":
                    raise SystemExit(f"bundle task failed: {final}")
        finally:
            cloud.stop()
    hand, inst = statistics.median(by_hand), statistics.median(by_instance)
    ratio = hand / inst
    print(
        json.dumps(
            {
                "bundle_instance": {
                    "disk_mb": args.size_mb,
                    "rounds": args.rounds,
                    "baseline_bundle_image_plus_upload_s": [round(t, 2) for t in by_hand],
                    "bundle_instance_s": [round(t, 2) for t in by_instance],
                    "baseline_median_s": round(hand, 2),
                    "bundle_instance_median_s": round(inst, 2),
                    "speed_vs_baseline": round(ratio, 3),
                    "target": TARGET_RATIO,
                    "meets_target": ratio >= TARGET_RATIO,
                }
            },
            indent=2,
        )
    )


def launch(ec2, location: str) -> str:
    image_id = ec2.register_image(ImageLocation=location, Name="bench")["ImageId"]
    # the zone reports capacity shortly after start
    instance_id = wait(lambda: _try_run(ec2, image_id), 600, "room to launch", interval=0.5)
    wait(lambda: _state(ec2, instance_id) == "running", 900, "the instance to run", interval=0.5)
    return instance_id


def _try_run(ec2, image_id: str) -> str | None:
    from botocore.exceptions import ClientError

    try:
        answer = ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, InstanceType="m1.large")
    except ClientError as err:
        if err.response["Error"]["Code"] == "InsufficientInstanceCapacity":
            return None
        raise
    return answer["Instances"][0]["InstanceId"]


def _state(ec2, instance_id: str) -> str:
    reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return reservations[0]["Instances"][0]["State"]["Name"]


def _final(ec2, bundle_id: str) -> dict | None:
    (task,) = ec2.describe_bundle_tasks(BundleIds=[bundle_id])["BundleTasks"]
    return task if task["State"] in ("complete", "failed") else None


if __name__ == "__main__":
    main()
