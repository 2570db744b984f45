"""Admission control against real CLC, CC, NC (test driver) and Walrus processes: concurrent launches never
over-commit a zone, a CC failure in the middle of a launch leaves no reservation behind, the `verbose` capacity
table, instance types and the VM type administration."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.clc.compute_cloud import (
    registered_image,
    run_when_room,
    start_cloud,
    wait_state,
    wait_zone_ready,
)
from tests.clc.ec2_helpers import client, stop_clean

# Polling only at start: capacity reports come from launches and from refreshes of stale reports, so what the
# tests see is what admission did, not what a poll happened to fetch.
CLC = {"KOALA_CC_POLL_SECONDS": 3600}
CC = {"NC_POLLING_FREQUENCY": 3600}  # likewise the CC's numbers come from its node's answers, not from polls


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, clc_database):
    directory = tmp_path_factory.mktemp("admission") / "cloud"
    instance = start_cloud(directory, clc=CLC, cc=CC, database_url=clc_database)
    try:
        yield instance
    finally:
        stop_clean(instance)


@pytest.fixture(scope="module")
def image(cloud, alice, tmp_path_factory):
    return registered_image(cloud, alice, tmp_path_factory.mktemp("bundle"), "machine", "img.three", "machine-three")


def capacity(cloud, creds) -> dict[str, tuple[int, int]]:
    """The verbose table: VM type -> (free, max)."""
    rows = client(cloud, creds).describe_availability_zones(ZoneNames=["verbose"])["AvailabilityZones"]
    table = {}
    for row in rows:
        if row["ZoneName"].startswith("|- ") and row["ZoneName"] != "|- vm types":
            free, _, most = row["State"].split()[:3]
            table[row["ZoneName"][3:]] = (int(free), int(most))
    return table


def wait_capacity(cloud, creds, vm: str, free: int, timeout: float = 30.0) -> tuple[int, int]:
    """The CC learns of freed capacity from its nodes a little after a termination: wait for it."""
    deadline = time.monotonic() + timeout
    while True:
        found = capacity(cloud, creds)[vm]
        if found[0] == free or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def all_ids(ec2) -> set[str]:
    return {i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}


def live_ids(ec2) -> list[str]:
    return [
        i["InstanceId"]
        for r in ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}])[
            "Reservations"
        ]
        for i in r["Instances"]
    ]


def test_verbose_zones_and_instance_types(cloud, alice, image):
    zones = client(cloud, alice).describe_availability_zones(ZoneNames=["verbose"])["AvailabilityZones"]
    names = [z["ZoneName"] for z in zones]
    assert names[:2] == ["zone1", "|- vm types"]
    vm_rows = ["|- m1.small", "|- c1.medium", "|- m1.large", "|- m1.xlarge", "|- c1.xlarge"]
    assert names[2:] == [*vm_rows, "|- volumes"]  # then the zone's block storage: GiB free / capacity
    small = zones[2]["State"].split()
    assert small[1] == "/" and len(small[0]) == 4 and small[3:] == ["1", "128", "2"]
    plain = client(cloud, alice).describe_availability_zones()["AvailabilityZones"]
    assert [(z["ZoneName"], z["State"]) for z in plain] == [("zone1", "available")]
    types = client(cloud, alice).describe_instance_types(InstanceTypes=["m1.large"])["InstanceTypes"]
    assert types[0]["VCpuInfo"]["DefaultVCpus"] == 2 and types[0]["MemoryInfo"]["SizeInMiB"] == 512
    assert types[0]["InstanceStorageInfo"]["TotalSizeInGB"] == 10


def test_twenty_concurrent_launches_never_overcommit(cloud, alice, image):
    free, most = capacity(cloud, alice)["m1.small"]
    assert free == most > 0 and free < 20, "the test driver node must fit fewer than 20 m1.small"

    def launch(_: int) -> str:
        try:
            answer = client(cloud, alice).run_instances(ImageId=image, MinCount=1, MaxCount=1)
            return answer["Instances"][0]["InstanceId"]
        except ClientError as err:
            return err.response["Error"]["Code"]

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(launch, range(20)))
    launched = [r for r in results if r.startswith("i-")]
    refused = [r for r in results if not r.startswith("i-")]
    assert len(launched) == free, results
    assert set(refused) == {"InsufficientInstanceCapacity"}
    ec2 = client(cloud, alice)
    wait_state(ec2, launched, {"running"})
    assert sorted(live_ids(ec2)) == sorted(launched)
    assert capacity(cloud, alice)["m1.small"] == (0, most)
    with pytest.raises(ClientError) as err:
        ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)
    assert err.value.response["Error"]["Code"] == "InsufficientInstanceCapacity"
    # MaxCount above what fits is trimmed; MinCount above it is refused.
    ec2.terminate_instances(InstanceIds=launched[:3])
    wait_state(ec2, launched[:3], {"terminated"})
    assert wait_capacity(cloud, alice, "m1.small", 3) == (3, most)
    with pytest.raises(ClientError):
        ec2.run_instances(ImageId=image, MinCount=4, MaxCount=4)
    trimmed = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=10)["Instances"]
    assert len(trimmed) == 3
    everything = launched[3:] + [i["InstanceId"] for i in trimmed]
    ec2.terminate_instances(InstanceIds=everything)
    wait_state(ec2, everything, {"terminated"})
    assert wait_capacity(cloud, alice, "m1.small", most) == (most, most)


def test_capacity_freed_by_a_termination_is_admitted_at_once(cloud, alice, image):
    """The CC gives an ended instance's capacity back when its node says so, and tells the CLC, which asks for
    a fresh report: no waiting for either's poll (both are an hour here)."""
    ec2 = client(cloud, alice)
    free, most = capacity(cloud, alice)["m1.small"]
    assert free == most
    launched = [i["InstanceId"] for i in ec2.run_instances(ImageId=image, MinCount=most, MaxCount=most)["Instances"]]
    wait_state(ec2, launched, {"running"})
    # A restarted CC polls its node once: from then on the node's own numbers count these instances.
    cloud.stop("cc")
    cloud.start("cc")
    assert wait_capacity(cloud, alice, "m1.small", 0) == (0, most)
    ec2.terminate_instances(InstanceIds=launched[:2])
    wait_state(ec2, launched[:2], {"terminated"})
    again = run_when_room(ec2, timeout=5, ImageId=image, MinCount=2, MaxCount=2)["Instances"]
    rest = launched[2:] + [i["InstanceId"] for i in again]
    ec2.terminate_instances(InstanceIds=rest)
    wait_state(ec2, rest, {"terminated"})
    assert wait_capacity(cloud, alice, "m1.small", most) == (most, most)


def test_a_launch_that_never_reached_the_cc_leaves_nothing(cloud, alice, image):
    ec2 = client(cloud, alice)
    free, most = capacity(cloud, alice)["m1.small"]  # a fresh report: the CLC believes the zone has room
    assert free == most
    known = all_ids(ec2)
    cloud.kill("cc")
    try:
        once = boto3.client(
            "ec2",
            endpoint_url=ec2.meta.endpoint_url,
            region_name=ec2.meta.region_name,
            aws_access_key_id=alice.access_key,
            aws_secret_access_key=alice.secret_key,
            config=Config(retries={"total_max_attempts": 1}),
        )
        with pytest.raises(ClientError) as err:
            once.run_instances(ImageId=image, MinCount=2, MaxCount=2, ClientToken="after-cc-failure")
        # The zone is down, not full; and a launch that never reached a CC leaves nothing behind.
        assert err.value.response["Error"]["Code"] == "Unsupported"
        assert "currently unavailable" in err.value.response["Error"]["Message"]
        assert all_ids(ec2) == known
    finally:
        cloud.start("cc")
    wait_zone_ready(cloud, alice)
    assert wait_capacity(cloud, alice, "m1.small", most) == (most, most)  # nothing left reserved
    # The failed request did not use up its ClientToken: the retry launches.
    launched = ec2.run_instances(ImageId=image, MinCount=most, MaxCount=most, ClientToken="after-cc-failure")[
        "Instances"
    ]
    assert len(launched) == most
    ids = [i["InstanceId"] for i in launched]
    wait_state(ec2, ids, {"running"})
    ec2.terminate_instances(InstanceIds=ids)
    wait_state(ec2, ids, {"terminated"})


def test_vm_types_admin(cloud, alice):
    def koala(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cli", "vm-types", "--state-dir", str(cloud.dir), "--json", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = json.loads(koala("list").stdout)
    assert [t["name"] for t in listed] == ["m1.small", "c1.medium", "m1.large", "m1.xlarge", "c1.xlarge"]
    refused = koala("set", "m1.large", "8", "512", "10")  # more cores than c1.xlarge: order broken
    assert refused.returncode == 1 and "component-wise ordered" in refused.stderr
    changed = koala("set", "m1.large", "2", "768", "10")
    assert changed.returncode == 0, changed.stderr
    types = client(cloud, alice).describe_instance_types(InstanceTypes=["m1.large"])["InstanceTypes"]
    assert types[0]["MemoryInfo"]["SizeInMiB"] == 768
    assert koala("reset").returncode == 0
    assert json.loads(koala("list").stdout) == listed


def test_only_the_zones_cc_may_report_its_instances(cloud, alice, image):
    """A CC of another zone (a valid cc certificate) cannot push states for zone1; an admin cannot at all."""
    import asyncio

    from common import pki
    from common.messages.clc_cc import Ack, ClusterInstance, NotifyInstancesRequest
    from common.rpc import RpcClient, RpcError
    from common.signing import Identity, TrustStore

    ec2 = client(cloud, alice)
    launched = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    wait_state(ec2, [launched], {"running"})
    cloud.aio.pki.ensure("cc-zone9", "cc")
    identity = Identity.from_files(cloud.aio.pki.cert_path("cc-zone9"), cloud.aio.pki.key_path("cc-zone9"))
    forged = NotifyInstancesRequest(zone="zone1", instances=[ClusterInstance(instance_id=launched, state="Teardown")])

    async def push(rpc: RpcClient) -> str:
        try:
            await rpc.call(cloud.url("clc"), "NotifyInstances", forged, Ack, expect_role="clc")
            return "accepted"
        except RpcError as err:
            return err.code
        finally:
            await rpc.close()

    other_cc = RpcClient(identity, TrustStore(pki.load_cert(cloud.aio.pki.ca_path)))
    assert asyncio.run(push(other_cc)) == "WrongCluster"
    assert asyncio.run(push(cloud.admin_client())) == "RoleNotAllowed"
    assert wait_state(ec2, [launched], {"running"})[launched]["State"]["Name"] == "running"
    ec2.terminate_instances(InstanceIds=[launched])
    wait_state(ec2, [launched], {"terminated"})
