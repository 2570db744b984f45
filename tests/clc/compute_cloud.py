"""Shared set-up of the compute tests: a whole cloud (CLC, Walrus, CC, NC on libvirt's test driver) and images
bundled with `koala bundle-image`, uploaded with `koala upload-bundle` and registered through boto3."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.clc.ec2_helpers import Creds, admin_creds, client, new_account
from tests.harness import Cloud


def start_cloud(directory: Path, clc: dict | None = None, cc: dict | None = None, database_url: str = "") -> Cloud:
    """The four services; the CLC on SQLite or on the PostgreSQL database at `database_url` (`clc_database`)."""
    cloud = Cloud(directory, extra={"clc": {**(clc or {}), "KOALA_DATABASE_URL": database_url}, "cc": cc or {}})
    cloud.start()
    return cloud


def koala(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, f"koala {args[0]}: {done.stdout}\n{done.stderr}"
    return done.stdout


def bundle_and_upload(cloud: Cloud, work: Path, name: str, bucket: str, *extra: str, rc: dict | None = None) -> str:
    """Bundle a small random image as the admin (or `rc`'s user) and upload it; the manifest location."""
    rc = rc or cloud.admin_credentials()
    work.mkdir(parents=True, exist_ok=True)
    image = work / name
    image.write_bytes(os.urandom(32 * 1024))
    env = {**os.environ, **rc}
    koala(env, "bundle-image", "-i", str(image), "-d", str(work), "-p", name, *extra)
    koala(env, "upload-bundle", "-b", bucket, "-m", str(work / f"{name}.manifest.xml"))
    return f"{bucket}/{name}.manifest.xml"


def registered_image(cloud: Cloud, creds: Creds, work: Path, name: str, bucket: str, image_name: str) -> str:
    """A small machine image bundled and uploaded as `name` into `bucket`, registered by `creds`' account as
    `image_name`, once the zone is ready to run it: the image fixture of the compute test modules."""
    location = bundle_and_upload(cloud, work, name, bucket)
    image_id = client(cloud, creds).register_image(ImageLocation=location, Name=image_name)["ImageId"]
    wait_zone_ready(cloud, creds)
    return image_id


def wait_zone_ready(cloud: Cloud, creds: Creds, timeout: float = 30.0) -> None:
    ec2 = client(cloud, creds)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        zones = ec2.describe_availability_zones(ZoneNames=["verbose"])["AvailabilityZones"]
        small = [z for z in zones if z["ZoneName"] == "|- m1.small"]
        if small and not small[0]["State"].startswith("0000"):
            return
        time.sleep(0.2)
    raise AssertionError(f"zone never reported capacity: {zones}")


def run_when_room(ec2, timeout: float = 30.0, **kwargs) -> dict:
    """RunInstances, waiting while the zone is full: a CC learns of capacity freed by terminations from its nodes
    a moment after the instances are gone."""
    from botocore.exceptions import ClientError

    deadline = time.monotonic() + timeout
    while True:
        try:
            return ec2.run_instances(**kwargs)
        except ClientError as err:
            if err.response["Error"]["Code"] != "InsufficientInstanceCapacity" or time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def wait_state(ec2, instance_ids: list[str], states: set[str], timeout: float = 30.0) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = {
            i["InstanceId"]: i
            for r in ec2.describe_instances(InstanceIds=instance_ids)["Reservations"]
            for i in r["Instances"]
        }
        if all(found.get(i, {}).get("State", {}).get("Name") in states for i in instance_ids):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not {states} after {timeout} s: {[(k, v['State']) for k, v in found.items()]}")
        time.sleep(0.05)


__all__ = [
    "Creds",
    "admin_creds",
    "bundle_and_upload",
    "client",
    "new_account",
    "registered_image",
    "start_cloud",
    "wait_state",
]
