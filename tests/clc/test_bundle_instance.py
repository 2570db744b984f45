"""BundleInstance, DescribeBundleTasks and CancelBundleTask against real CLC, Walrus, CC and NC (libvirt's test
driver) processes through boto3: the bundle lands in the user's bucket signed by the cloud, decrypts to the disk
the instance booted, registers and launches; EC2's error for every bad parameter; a cancel racing completion; a
kill -9 of the CLC or the NC mid-bundle ends complete or failed, never stuck, with no work files left."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from common.bundle import keys
from common.bundle import manifest as mf
from common.bundle.pipeline import DirectoryParts, decrypt_bundle
from tests.clc.compute_cloud import koala, run_when_room, start_cloud, wait_state, wait_zone_ready
from tests.clc.ec2_helpers import Creds, client, stop_clean

IMAGE_BYTES = 3 << 20


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    instance = start_cloud(tmp_path_factory.mktemp("bundling") / "cloud")
    try:
        yield instance
    finally:
        stop_clean(instance)


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    image = tmp_path_factory.mktemp("original") / "bundled-src"
    image.write_bytes(os.urandom(IMAGE_BYTES // 2) + bytes(IMAGE_BYTES // 2))
    return image


@pytest.fixture(scope="module")
def image(cloud, alice, original, tmp_path_factory):
    work = tmp_path_factory.mktemp("bundle")
    env = {**os.environ, **cloud.admin_credentials()}
    koala(env, "bundle-image", "-i", str(original), "-d", str(work), "-p", "src")
    koala(env, "upload-bundle", "-b", "img.src", "-m", str(work / "src.manifest.xml"))
    image_id = client(cloud, alice).register_image(ImageLocation="img.src/src.manifest.xml", Name="src")["ImageId"]
    wait_zone_ready(cloud, alice)
    return image_id


def launch(cloud, creds: Creds, image_id: str) -> str:
    ec2 = client(cloud, creds)
    instance_id = run_when_room(ec2, ImageId=image_id, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    wait_state(ec2, [instance_id], {"running"})
    return instance_id


@pytest.fixture(scope="module")
def running(cloud, alice, image) -> str:
    return launch(cloud, alice, image)


def s3(cloud, creds: Creds):
    url = cloud.admin_credentials()["S3_URL"]
    config = Config(s3={"addressing_style": "path"}, signature_version="s3v4")
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="eucalyptus",
        aws_access_key_id=creds.access_key,
        aws_secret_access_key=creds.secret_key,
        config=config,
    )


def storage(creds: Creds, bucket: str, prefix: str, **change) -> dict:
    """EC2's Storage.S3 with a browser-POST policy signed as the EC2 documentation shows."""
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=change.pop("expires_in", 3600))
    conditions = change.pop("conditions", [{"bucket": bucket}, ["starts-with", "$key", prefix]])
    document = json.dumps({"expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"), "conditions": conditions}).encode()
    secret = change.pop("secret", creds.secret_key)
    signature = base64.b64encode(hmac.new(secret.encode(), base64.b64encode(document), hashlib.sha1).digest())
    out = {
        "Bucket": bucket,
        "Prefix": prefix,
        "AWSAccessKeyId": creds.access_key,
        "UploadPolicy": document,  # a blob: boto3 sends it base64-encoded, the text the signature covers
        "UploadPolicySignature": signature.decode(),
    }
    out.update(change)
    return {"S3": {k: v for k, v in out.items() if v is not None}}


def code_of(call, **kwargs) -> str:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    return caught.value.response["Error"]["Code"]


def wait_final(ec2, bundle_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        (task,) = ec2.describe_bundle_tasks(BundleIds=[bundle_id])["BundleTasks"]
        if task["State"] in ("complete", "failed"):
            return task
        if time.monotonic() > deadline:
            raise AssertionError(f"bundle task stuck: {task}")
        time.sleep(0.2)


def keys_in(cloud, creds: Creds, bucket: str) -> set[str]:
    listing = s3(cloud, creds).list_objects(Bucket=bucket)
    return {item["Key"] for item in listing.get("Contents", [])}


def work_files(cloud) -> list[Path]:
    return [p for d in Path(cloud.dir).rglob(".bundles") for p in d.rglob("*")]


def cloud_key(cloud):
    (path,) = [p for p in Path(cloud.dir).rglob("cloud-pk.pem") if "clc" in str(p)] or list(
        Path(cloud.dir).rglob("cloud-pk.pem")
    )[:1]
    return keys.load_private_key(path)


def test_bundle_registers_and_launches(cloud, alice, running, original, tmp_path):
    ec2 = client(cloud, alice)
    s3(cloud, alice).create_bucket(Bucket="bundled")
    task = ec2.bundle_instance(InstanceId=running, Storage=storage(alice, "bundled", "snap1"))["BundleTask"]
    assert task["State"] == "pending" and task["BundleId"].startswith("bun-")
    assert task["Storage"]["S3"] == {"Bucket": "bundled", "Prefix": "snap1"}
    assert code_of(ec2.bundle_instance, InstanceId=running, Storage=storage(alice, "bundled", "x")) == (
        "BundlingInProgress"
    )
    done = wait_final(ec2, task["BundleId"])
    assert done["State"] == "complete", done
    assert done["Progress"] == "100%"
    listed = ec2.describe_bundle_tasks(Filters=[{"Name": "state", "Values": ["complete"]}])["BundleTasks"]
    assert task["BundleId"] in {t["BundleId"] for t in listed}
    stored = keys_in(cloud, alice, "bundled")
    assert "snap1.manifest.xml" in stored and any(k.startswith("snap1.part.") for k in stored)
    assert not work_files(cloud)

    # The bundle is the disk the instance booted (its image's size), encrypted for the cloud, signed by it.
    bucket = s3(cloud, alice)
    for key in stored:
        bucket.download_file("bundled", key, str(tmp_path / key))
    raw = (tmp_path / "snap1.manifest.xml").read_bytes()
    manifest = mf.parse(raw)
    assert manifest.user == alice.account_id and manifest.name == "snap1"
    with (tmp_path / "out.img").open("wb") as out:
        decrypt_bundle(manifest, cloud_key(cloud), DirectoryParts(tmp_path), out)
    assert (tmp_path / "out.img").read_bytes() == original.read_bytes()

    image_id = ec2.register_image(ImageLocation="bundled/snap1.manifest.xml", Name="bundled")["ImageId"]
    assert image_id.startswith("emi-")
    launched = launch(cloud, alice, image_id)
    ec2.terminate_instances(InstanceIds=[launched])
    # a cancel that comes after completion changes nothing
    after = ec2.cancel_bundle_task(BundleId=task["BundleId"])["BundleTask"]
    assert after["State"] == "complete"


def test_bad_input(cloud, alice, bob, running, image):
    ec2 = client(cloud, alice)
    s3(cloud, alice).create_bucket(Bucket="bundled-bad")

    def bundle(instance: str = running, **change) -> str:
        return code_of(ec2.bundle_instance, InstanceId=instance, Storage=storage(alice, "bundled-bad", "p", **change))

    assert bundle(secret="not-the-secret") == "InvalidParameterValue"
    assert bundle(UploadPolicySignature="%%%") == "InvalidParameterValue"
    assert bundle(Bucket=None) == "MissingParameter"
    assert bundle(UploadPolicySignature=None) == "MissingParameter"
    assert bundle(expires_in=-60) == "InvalidParameterValue"
    assert bundle(conditions=[{"bucket": "elsewhere"}, ["starts-with", "$key", ""]]) == "InvalidParameterValue"
    assert bundle(conditions=[{"bucket": "bundled-bad"}, ["starts-with", "$key", "q"]]) == "InvalidParameterValue"
    assert bundle(Prefix="../up") == "InvalidParameterValue"
    assert bundle(Prefix="a" * 200) == "InvalidParameterValue"
    assert bundle(UploadPolicy=b"not json") == "InvalidParameterValue"
    assert bundle(UploadPolicy=b"x" * 20000) == "InvalidParameterValue"
    assert bundle(AWSAccessKeyId=bob.access_key, secret=bob.secret_key) == "InvalidParameterValue"
    assert bundle(AWSAccessKeyId="AKIDNOSUCHKEY0000000") == "InvalidParameterValue"
    assert bundle(instance="i-zzz") == "InvalidInstanceID.Malformed"
    assert bundle(instance="i-0badf00d") == "InvalidInstanceID.NotFound"
    # another account's instance does not exist for bob
    theirs = storage(bob, "bundled-bad", "p")
    assert (
        code_of(client(cloud, bob).bundle_instance, InstanceId=running, Storage=theirs) == "InvalidInstanceID.NotFound"
    )
    assert code_of(ec2.describe_bundle_tasks, BundleIds=["bun-zz"]) == "InvalidBundleID.Malformed"
    assert code_of(ec2.describe_bundle_tasks, BundleIds=["bun-0badf00d"]) == "InvalidBundleID.NotFound"
    assert code_of(ec2.cancel_bundle_task, BundleId="bun-0badf00d") == "InvalidBundleID.NotFound"
    assert code_of(ec2.describe_bundle_tasks, Filters=[{"Name": "colour", "Values": ["x"]}]) == (
        "InvalidParameterValue"
    )

    # a terminated instance: EC2's IncorrectInstanceState
    gone = launch(cloud, alice, image)
    ec2.terminate_instances(InstanceIds=[gone])
    wait_state(ec2, [gone], {"terminated"})
    assert bundle(instance=gone) == "IncorrectInstanceState"

    # a bucket that does not exist: accepted (EC2 checks the bucket when it stores), then failed, never stuck
    task = ec2.bundle_instance(InstanceId=running, Storage=storage(alice, "no-such-bucket", "p"))["BundleTask"]
    done = wait_final(ec2, task["BundleId"])
    assert done["State"] == "failed" and "NoSuchBucket" in done["BundleTaskError"]["Message"], done
    assert not work_files(cloud)
    # bob sees none of alice's tasks
    assert code_of(client(cloud, bob).describe_bundle_tasks, BundleIds=[task["BundleId"]]) == "InvalidBundleID.NotFound"
    assert client(cloud, bob).describe_bundle_tasks()["BundleTasks"] == []


def test_cancel_races_completion(cloud, alice, running):
    ec2 = client(cloud, alice)
    s3(cloud, alice).create_bucket(Bucket="bundled-cancel")
    for round_ in range(3):
        prefix = f"c{round_}"
        task = ec2.bundle_instance(InstanceId=running, Storage=storage(alice, "bundled-cancel", prefix))["BundleTask"]
        time.sleep(0.3 * round_)  # cancel before the node starts, while it works, and near the end
        cancelled = ec2.cancel_bundle_task(BundleId=task["BundleId"])["BundleTask"]
        assert cancelled["State"] in ("cancelling", "complete", "failed")
        done = wait_final(ec2, task["BundleId"])
        manifest_stored = f"{prefix}.manifest.xml" in keys_in(cloud, alice, "bundled-cancel")
        if done["State"] == "complete":
            assert manifest_stored
        else:
            assert done["BundleTaskError"]["Code"] == "Client.Cancelled", done
            assert not manifest_stored
    assert not work_files(cloud)


@pytest.mark.parametrize("victim", ["clc", "nc"])
def test_kill_mid_bundle(cloud, alice, image, victim):
    """Last in the module: on libvirt's test driver the NC's guests die with it."""
    ec2 = client(cloud, alice)
    running = launch(cloud, alice, image)
    bucket = f"bundled-kill-{victim}"
    s3(cloud, alice).create_bucket(Bucket=bucket)
    task = ec2.bundle_instance(InstanceId=running, Storage=storage(alice, bucket, "k"))["BundleTask"]
    cloud.kill(victim)
    cloud.start(victim)
    ec2 = client(cloud, alice)
    done = wait_final(ec2, task["BundleId"])
    manifest_stored = "k.manifest.xml" in keys_in(cloud, alice, bucket)
    assert done["State"] in ("complete", "failed")
    assert manifest_stored == (done["State"] == "complete"), done
    if victim == "clc":  # the node carried on: the restarted CLC signs what it made
        assert done["State"] == "complete", done
    assert not work_files(cloud)
