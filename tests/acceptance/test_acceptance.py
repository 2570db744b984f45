"""The whole cloud, as a user meets it: bundle -> upload -> register -> key pair and group -> two QEMU guests ->
console -> SSH on a public address -> terminate -> everything cleaned up.

Real processes everywhere: the four services (the NC on qemu:///system, software emulation), libvirtd, the CC's
router with iptables and dnsmasq, the guest test image built from Debian packages; the network is described in
tests/acceptance/world.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from cli.allinone import qemu_usable
from cli.guest_image import ensure_registered
from tests.acceptance import ssh_probe
from tests.acceptance.world import PUBLIC, acceptance_world
from tests.harness import Cloud
from tests.network.topology import Topology
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, libvirtd)"),
]


class Acceptance:
    def __init__(self, cloud: Cloud, topology: Topology, bridge: str, instances: Path):
        self.cloud, self.topology, self.bridge, self.instances = cloud, topology, bridge, instances
        self.eucarc = cloud.aio.admin_eucarc_source()
        creds = cloud.admin_credentials()
        self.ec2 = boto3.client(
            "ec2", endpoint_url=creds["EC2_URL"], region_name="eucalyptus",
            aws_access_key_id=creds["EC2_ACCESS_KEY"], aws_secret_access_key=creds["EC2_SECRET_KEY"],
        )  # fmt: skip

    def instances_by_id(self, ids: list[str]) -> dict[str, dict]:
        reservations = self.ec2.describe_instances(InstanceIds=ids)["Reservations"]
        return {i["InstanceId"]: i for r in reservations for i in r["Instances"]}

    def wait_states(self, ids: list[str], state: str, timeout: float) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.instances_by_id(ids)
            if all(found.get(i, {}).get("State", {}).get("Name") == state for i in ids):
                return found
            if time.monotonic() > deadline:
                logs = {role: self.cloud.log(role)[-3000:] for role in ("clc", "cc", "nc")}
                raise AssertionError(f"not all {state}: {json.dumps(found, default=str)[:3000]}\n{logs}")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Acceptance]:
    if not qemu_usable():
        pytest.fail("libvirtd with QEMU is not usable: deploy/bootstrap.sh sets it up")
    instances = Path(f"/var/tmp/koala-acceptance-{secrets.token_hex(2)}")  # readable by libvirt's qemu user
    instances.mkdir(mode=0o755)
    try:
        with acceptance_world(tmp_path_factory.mktemp("acceptance"), instances) as built:
            yield Acceptance(built.cloud, built.topology, built.bridge, built.instances)
    finally:
        shutil.rmtree(instances, ignore_errors=True)


@pytest.mark.timeout(900)  # two guests, a reboot, and a third guest booted from a BundleInstance of the first
def test_bundle_register_run_ssh_terminate(world: Acceptance, tmp_path: Path) -> None:
    ec2 = world.ec2
    # Bundle with `koala bundle-image`, upload with `koala upload-bundle`, RegisterImage with boto3.
    images = ensure_registered(world.cloud.dir, world.eucarc, log=lambda _: None)
    described = {i["ImageId"]: i for i in ec2.describe_images(ImageIds=list(images.values()))["Images"]}
    assert described[images["machine"]]["KernelId"] == images["kernel"]
    assert described[images["kernel"]]["ImageType"] == "kernel"

    key = ec2.create_key_pair(KeyName="acceptance")
    key_file = tmp_path / "acceptance.pem"
    key_file.write_text(key["KeyMaterial"])
    key_file.chmod(0o600)
    ec2.create_security_group(GroupName="web", Description="ssh from anywhere")
    ec2.authorize_security_group_ingress(GroupName="web", IpProtocol="tcp", FromPort=22, ToPort=22,
                                         CidrIp="0.0.0.0/0")  # fmt: skip

    reservation = ec2.run_instances(ImageId=images["machine"], MinCount=2, MaxCount=2, KeyName="acceptance",
                                    SecurityGroups=["web"], InstanceType="c1.medium")  # fmt: skip
    ids = [i["InstanceId"] for i in reservation["Instances"]]
    try:
        running = _run_and_reach(world, ids, key_file)
        _protect_and_reboot(world, ids[1])
        _bundle_register_and_boot(world, ids[0], images)
    except BaseException:
        ec2.terminate_instances(InstanceIds=ids)  # never leave guests running behind a failure
        raise
    ec2.terminate_instances(InstanceIds=ids)
    world.wait_states(ids, "terminated", timeout=120)
    _wait(lambda: not _domains(ids), 60, "domains gone")
    leftovers = lambda: [str(p) for i in ids for p in world.instances.rglob(f"{i}*")]  # noqa: E731
    _wait(lambda: not leftovers(), 60, lambda: f"instance files gone: {leftovers()}")
    addresses_of = [a for i in running.values() for a in (i["PrivateIpAddress"], i.get("PublicIpAddress")) if a]

    def stale_rules() -> list[str]:
        rules = world.topology.iptables_save("rtr").splitlines()
        return [rule for rule in rules if any(f"{address}/" in rule or rule.endswith(address) for address in
                                              addresses_of)]  # fmt: skip

    _wait(lambda: not stale_rules(), 30, lambda: f"the instances' rules gone: {stale_rules()}")
    addresses = ec2.describe_addresses()["Addresses"]
    assert not [a for a in addresses if a.get("InstanceId") in ids]

    def capacity() -> tuple[int, int]:
        zones = ec2.describe_availability_zones(ZoneNames=["verbose"])["AvailabilityZones"]
        row = next(z["State"] for z in zones if z["ZoneName"] == "|- c1.medium")
        free, _, most = row.split()[:3]
        return int(free), int(most)

    # Every reservation released: the zone is as free as it can be (once the CC has polled its node).
    _wait(lambda: capacity()[0] == capacity()[1] > 0, 60, lambda: f"capacity released: {capacity()}")


def _run_and_reach(world: Acceptance, ids: list[str], key_file: Path) -> dict[str, dict]:
    """Both running, each console shows the guest's lines, SSH on the first one's public address works."""
    ec2 = world.ec2
    running = world.wait_states(ids, "running", timeout=120)
    for instance_id in ids:
        deadline = time.monotonic() + 180
        while f"KOALA-GUEST ready instance={instance_id}" not in _console(ec2, instance_id):
            assert time.monotonic() < deadline, _console(ec2, instance_id)[-3000:]
            time.sleep(1)
        text = _console(ec2, instance_id)
        assert f"KOALA-GUEST metadata instance={instance_id}" in text, text[-1500:]
        assert "KOALA-GUEST ssh-key installed" in text, text[-1500:]

    target = ids[0]
    public_ip = running[target].get("PublicIpAddress")
    assert public_ip and public_ip.startswith(f"{PUBLIC}."), running[target]
    ssh = ssh_probe.run_in(world.topology, "pub", public_ip, key_file, "hostname")
    assert ssh.returncode == 0 and ssh.stdout.strip() == target, (
        ssh.stdout + ssh.stderr + _console(ec2, target)[-1500:] + world.topology.iptables_save("rtr")
    )
    return running


def _protect_and_reboot(world: Acceptance, instance_id: str) -> None:
    """disableApiTermination (awscli) refuses TerminateInstances until reset (boto3); RebootInstances (awscli)
    boots the guest a second time: it ignores the ACPI request, so the NC resets it after its grace period."""
    ec2, creds = world.ec2, world.cloud.admin_credentials()
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": creds["EC2_ACCESS_KEY"],
        "AWS_SECRET_ACCESS_KEY": creds["EC2_SECRET_KEY"],
        "AWS_DEFAULT_REGION": "eucalyptus",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    aws = [str(Path(sys.executable).parent / "aws"), "--endpoint-url", creds["EC2_URL"], "ec2"]
    subprocess.run([*aws, "modify-instance-attribute", "--instance-id", instance_id, "--disable-api-termination"],
                   check=True, env=env, capture_output=True, timeout=60)  # fmt: skip
    with pytest.raises(ClientError) as refused:
        ec2.terminate_instances(InstanceIds=[instance_id])
    assert refused.value.response["Error"]["Code"] == "OperationNotPermitted"
    ec2.reset_instance_attribute(InstanceId=instance_id, Attribute="disableApiTermination")
    booted = f"KOALA-GUEST booted instance={instance_id}"
    assert _console(ec2, instance_id).count(booted) == 1
    subprocess.run([*aws, "reboot-instances", "--instance-ids", instance_id], check=True, env=env,
                   capture_output=True, timeout=60)  # fmt: skip
    _wait(lambda: _console(ec2, instance_id).count(booted) == 2, 180, "the guest's second boot on its console")
    _wait(lambda: _console(ec2, instance_id).count(f"KOALA-GUEST ready instance={instance_id}") == 2, 180,
          "the guest ready again")  # fmt: skip
    assert world.instances_by_id([instance_id])[instance_id]["State"]["Name"] == "running"


def _bundle_register_and_boot(world: Acceptance, instance_id: str, images: dict[str, str]) -> None:
    """BundleInstance of a running guest with a browser-POST upload policy -> complete -> RegisterImage of the
    bundle (with the guest's kernel and ramdisk) -> a new guest from it boots to ready."""
    ec2, creds = world.ec2, world.cloud.admin_credentials()
    s3 = boto3.client(
        "s3", endpoint_url=creds["S3_URL"], region_name="eucalyptus", aws_access_key_id=creds["EC2_ACCESS_KEY"],
        aws_secret_access_key=creds["EC2_SECRET_KEY"],
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
    )  # fmt: skip
    s3.create_bucket(Bucket="rebundled")
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    policy = json.dumps({"expiration": expires, "conditions": [{"bucket": "rebundled"}, ["starts-with", "$key", ""]]})
    signature = hmac.new(creds["EC2_SECRET_KEY"].encode(), base64.b64encode(policy.encode()), hashlib.sha1).digest()
    storage = {
        "S3": {
            "Bucket": "rebundled",
            "Prefix": "guest",
            "AWSAccessKeyId": creds["EC2_ACCESS_KEY"],
            "UploadPolicy": policy.encode(),
            "UploadPolicySignature": base64.b64encode(signature).decode(),
        }
    }
    bundle_id = ec2.bundle_instance(InstanceId=instance_id, Storage=storage)["BundleTask"]["BundleId"]

    def final() -> dict | None:
        (task,) = ec2.describe_bundle_tasks(BundleIds=[bundle_id])["BundleTasks"]
        return task if task["State"] in ("complete", "failed") else None

    _wait(final, 600, "the bundle task to end")
    task = final()
    assert task is not None and task["State"] == "complete", task
    image_id = ec2.register_image(ImageLocation="rebundled/guest.manifest.xml", Name="rebundled",
                                  KernelId=images["kernel"], RamdiskId=images["ramdisk"])["ImageId"]  # fmt: skip
    new_id = ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, InstanceType="c1.medium")["Instances"][0][
        "InstanceId"
    ]
    try:
        world.wait_states([new_id], "running", timeout=300)
        ready = f"KOALA-GUEST ready instance={new_id}"
        _wait(
            lambda: ready in _console(ec2, new_id),
            300,
            lambda: f"the rebundled guest ready: {_console(ec2, new_id)[-2000:]}",
        )
    finally:
        ec2.terminate_instances(InstanceIds=[new_id])
    world.wait_states([new_id], "terminated", timeout=120)


def _console(ec2, instance_id: str) -> str:
    return ec2.get_console_output(InstanceId=instance_id).get("Output", "") or ""


def _domains(ids: list[str]) -> list[str]:
    listing = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"], capture_output=True,
                             text=True).stdout.split()  # fmt: skip
    return [name for name in listing if name in ids]


def _wait(predicate, timeout: float, what) -> None:
    wait_for(predicate, timeout, interval=0.5, what=what)
