"""Correctness at scale: 2 CCs, 50 simulated nodes (two `koala nc-fleet` processes of 25 real NC identities each,
libvirt's test driver), 2,000 instances launched through boto3 as two RunInstances of 1,000.

Each node offers exactly 40 cores, so the 2,000 single-core instances fill the cloud to the last core: every
instance must run exactly once (asked of every node itself, not only of the CLC), the capacity accounting must be
exact (the zones' tables and every node's free cores at zero, one more instance refused), and after the
terminations every instance must be gone from every node with every core given back."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from common.messages.cc_nc import DescribeInstancesRequest, DescribeInstancesResponse, DescribeResourceResponse
from common.messages.clc_cc import DescribeNodesResponse
from tests.clc.compute_cloud import registered_image
from tests.clc.ec2_helpers import admin_creds, client
from tests.fleet import ClusterProcess, NodeFleet, fleet_ports
from tests.harness import Cloud
from tests.waiting import wait_for

NODES_PER_ZONE = 25
CORES = 40
PER_ZONE = NODES_PER_ZONE * CORES  # 1,000: one RunInstances each
ZONES = ("zone1", "zone2")
CC_SETTINGS = {"NC_POLLING_FREQUENCY": 10}  # pushes carry the changes; polls are the safety net

pytestmark = pytest.mark.timeout(1200)


class ScaleWorld:
    def __init__(self, base: Path):
        ports = {zone: fleet_ports(NODES_PER_ZONE) for zone in ZONES}
        entries = {zone: " ".join(f"127.0.0.1:{p}" for p in ports[zone]) for zone in ZONES}
        self.cloud = Cloud(
            base, roles=("clc", "walrus", "cc"), extra={"cc": {"NODES": entries["zone1"], **CC_SETTINGS}}
        )
        self.cloud.start()
        self.cc2 = ClusterProcess(self.cloud, "zone2", entries["zone2"], CC_SETTINGS)
        self.cloud.extra_nodes.append(self.cc2)  # stopped with the cloud
        self.cc2.start()
        self.cc2.register()
        cc_urls = {"zone1": self.cloud.url("cc"), "zone2": self.cc2.url}
        self.fleets = [
            NodeFleet(self.cloud, zone, ports[zone], cc_urls[zone], cores=CORES, log_level="WARNING") for zone in ZONES
        ]
        for fleet in self.fleets:
            self.cloud.extra_nodes.append(fleet)
            fleet.start()
        self.cc_urls = cc_urls

    @property
    def node_urls(self) -> list[str]:
        return [url for fleet in self.fleets for url in fleet.urls]

    def ask_nodes(self, operation: str, message, answer) -> list:
        """Every node asked directly (signed, as the admin), concurrently."""

        async def run() -> list:
            rpc = self.cloud.admin_client()
            gate = asyncio.Semaphore(16)

            async def one(url: str):
                async with gate:
                    return await rpc.call(url, operation, message, answer, expect_role="nc", timeout=30)

            try:
                return await asyncio.gather(*(one(url) for url in self.node_urls))
            finally:
                await rpc.close()

        return asyncio.run(run())

    def cc_nodes(self, zone: str) -> DescribeNodesResponse:
        async def run() -> DescribeNodesResponse:
            rpc = self.cloud.admin_client()
            try:
                return await rpc.call(
                    self.cc_urls[zone], "DescribeNodes", None, DescribeNodesResponse, expect_role="cc"
                )
            finally:
                await rpc.close()

        return asyncio.run(run())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScaleWorld]:
    world = ScaleWorld(tmp_path_factory.mktemp("scale"))
    try:
        yield world
    finally:
        world.cloud.stop()


def _zone_rows(ec2) -> dict[str, str]:
    zones = ec2.describe_availability_zones(ZoneNames=["verbose"])["AvailabilityZones"]
    rows, zone = {}, ""
    for row in zones:
        if row["ZoneName"] in ZONES:
            zone = row["ZoneName"]
        elif row["ZoneName"] == "|- m1.small":
            rows[zone] = row["State"].split()[0:3]
    return {z: " ".join(r) for z, r in rows.items()}


def _instances(ec2) -> dict[str, dict]:
    found = {}
    for page in ec2.get_paginator("describe_instances").paginate():
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                found[instance["InstanceId"]] = instance
    return found


def test_two_thousand_instances_on_fifty_nodes(world: ScaleWorld, tmp_path: Path) -> None:
    cloud = world.cloud
    creds = admin_creds(cloud)
    ec2 = client(cloud, creds)
    image = registered_image(cloud, creds, tmp_path, "scale", "scale-bucket", "scale-image")
    full_table = {zone: f"{PER_ZONE:04d} / {PER_ZONE:04d}" for zone in ZONES}
    wait_for(lambda: _zone_rows(ec2) == full_table, 60, what=f"both zones offering {PER_ZONE} m1.small")

    launched: list[str] = []
    for zone in ZONES:
        answer = ec2.run_instances(
            ImageId=image, MinCount=PER_ZONE, MaxCount=PER_ZONE, InstanceType="m1.small",
            Placement={"AvailabilityZone": zone},
        )  # fmt: skip
        assert len(answer["Instances"]) == PER_ZONE
        # Serialized a chunk at a time with the CLC serving requests in between, and still in launch order.
        assert [i["AmiLaunchIndex"] for i in answer["Instances"]] == list(range(PER_ZONE))
        launched += [i["InstanceId"] for i in answer["Instances"]]
    assert len(set(launched)) == 2 * PER_ZONE

    def all_running() -> bool:
        states = Counter(i["State"]["Name"] for i in _instances(ec2).values())
        return states == Counter({"running": 2 * PER_ZONE})

    wait_for(all_running, 600, 1.0, what="2,000 instances running")

    # Every instance runs exactly once, on a node of its own zone, as the nodes themselves say.
    listings = world.ask_nodes("DescribeInstances", DescribeInstancesRequest(), DescribeInstancesResponse)
    on_nodes = Counter(i.instance_id for listing in listings for i in listing.instances if i.state != "Teardown")
    assert set(on_nodes) == set(launched) and set(on_nodes.values()) == {1}
    described = _instances(ec2)
    for listing, url in zip(listings, world.node_urls, strict=True):
        zone = "zone1" if url in world.fleets[0].urls else "zone2"
        assert {described[i.instance_id]["Placement"]["AvailabilityZone"] for i in listing.instances} <= {zone}
        assert all(i.state == "Extant" and i.detail == "running" for i in listing.instances)

    # Capacity accounting is exact: every core taken on every node, nothing left in either zone, no more room.
    resources = world.ask_nodes("DescribeResource", None, DescribeResourceResponse)
    assert [(r.cores_available, r.instances) for r in resources] == [(0, CORES)] * len(world.node_urls)

    # The CCs' books: every node holds exactly its 40 (its free cores are the lower of the CC's reservations and
    # the node's last report, so they settle at 0 by the next poll).
    def books(instances: int, free: int) -> bool:
        nodes = [n for zone in ZONES for n in world.cc_nodes(zone).nodes]
        assert len(nodes) == 2 * NODES_PER_ZONE and all(n.instances == instances for n in nodes)
        return all(n.cores_available == free for n in nodes)

    wait_for(lambda: books(CORES, 0), 60, 1.0, what="every node's cores taken in the CCs' books")
    wait_for(lambda: _zone_rows(ec2) == {zone: f"0000 / {PER_ZONE:04d}" for zone in ZONES}, 30, what="zones full")
    with pytest.raises(ClientError) as refused:
        ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="m1.small")
    assert refused.value.response["Error"]["Code"] == "InsufficientInstanceCapacity"

    # All terminated, gone from every node, every core given back.
    for start in range(0, len(launched), 500):  # a request carries at most 1,000 parameters
        ec2.terminate_instances(InstanceIds=launched[start : start + 500])

    def all_ended() -> bool:
        ours = set(launched)
        return {i["State"]["Name"] for i in _instances(ec2).values() if i["InstanceId"] in ours} <= {"terminated"}

    wait_for(all_ended, 600, 1.0, what="2,000 instances terminated")
    resources = world.ask_nodes("DescribeResource", None, DescribeResourceResponse)
    assert [(r.cores_available, r.instances) for r in resources] == [(CORES, 0)] * len(world.node_urls)
    listings = world.ask_nodes("DescribeInstances", DescribeInstancesRequest(), DescribeInstancesResponse)
    assert all(i.state == "Teardown" for listing in listings for i in listing.instances)
    wait_for(lambda: _zone_rows(ec2) == full_table, 60, what="both zones empty again")
    wait_for(lambda: books(0, CORES), 60, 1.0, what="every node's cores free in the CCs' books")
