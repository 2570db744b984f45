"""Nodes that answer too late: one CC and eight simulated nodes (one `koala nc-fleet` process, libvirt's test driver)
filled to the last core, with the fleet process frozen (SIGSTOP) while the CC sends the launches, for longer than
the CC's RunInstance timeout, and then let go (SIGCONT).

The frozen nodes take the calls in (their sockets accept) and carry them out once they run again, after the CC has
stopped waiting: an overloaded host does the same. Whether a node runs an instance is in doubt for the CC until
the node speaks again; it must not place the instance elsewhere meanwhile (it ran twice for a moment, the cores it
gave back were still used, and the zone's last instances were refused as 'free: 0 cores' and ended: 0.3 % of the
10,000-instance fleet benchmark). Every instance must run exactly once, on a node that counts it, and the
accounting must be exact."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.messages.cc_nc import DescribeInstancesRequest, DescribeInstancesResponse, DescribeResourceResponse
from common.messages.clc_cc import DescribeNodesResponse
from tests.clc.compute_cloud import registered_image
from tests.clc.ec2_helpers import admin_creds, client
from tests.fleet import NodeFleet, fleet_ports
from tests.harness import Cloud
from tests.waiting import wait_for

NODES = 8
CORES = 10
INSTANCES = NODES * CORES
RUN_TIMEOUT = 2.0
FROZEN_SECONDS = 3 * RUN_TIMEOUT  # past the old failover's end of the line (timeout, no other node fits: ended)
CC_SETTINGS = {"KOALA_RUN_TIMEOUT": RUN_TIMEOUT, "KOALA_NC_TIMEOUT": 1, "NC_POLLING_FREQUENCY": 2}

pytestmark = pytest.mark.timeout(600)


class World:
    def __init__(self, base: Path):
        ports = fleet_ports(NODES)
        nodes = " ".join(f"127.0.0.1:{port}" for port in ports)
        self.cloud = Cloud(base, roles=("clc", "walrus", "cc"), extra={"cc": {"NODES": nodes, **CC_SETTINGS}})
        self.cloud.start()
        self.fleet = NodeFleet(self.cloud, "slow", ports, self.cloud.url("cc"), cores=CORES, log_level="INFO")
        self.cloud.extra_nodes.append(self.fleet)
        self.fleet.start()

    def _call(self, url: str, operation: str, message, answer, role: str):
        async def run():
            rpc = self.cloud.admin_client()
            try:
                return await rpc.call(url, operation, message, answer, expect_role=role, timeout=30)
            finally:
                await rpc.close()

        return asyncio.run(run())

    def ask_nodes(self, operation: str, message, answer) -> list:
        return [self._call(url, operation, message, answer, "nc") for url in self.fleet.urls]

    def cc_nodes(self) -> DescribeNodesResponse:
        return self._call(self.cloud.url("cc"), "DescribeNodes", None, DescribeNodesResponse, "cc")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    world = World(tmp_path_factory.mktemp("slow-nodes"))
    try:
        yield world
    finally:
        world.cloud.stop()


def _states(ec2, ids: list[str], launching: bool = False) -> Counter:
    found = {}
    for page in ec2.get_paginator("describe_instances").paginate():
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                found[instance["InstanceId"]] = instance
    if launching:  # an instance ended during the launch will not come back: fail at once, with why
        ended = {found[i].get("StateReason", {}).get("Message", "") for i in ids if i in found and
                 found[i]["State"]["Name"] in ("shutting-down", "terminated")}  # fmt: skip
        assert not ended, f"instances ended during the launch: {sorted(ended)[:3]}"
    return Counter(found[i]["State"]["Name"] if i in found else "missing" for i in ids)


def test_launch_on_nodes_that_answer_too_late_runs_each_instance_once(world: World, tmp_path: Path) -> None:
    cloud = world.cloud
    creds = admin_creds(cloud)
    ec2 = client(cloud, creds)
    image = registered_image(cloud, creds, tmp_path, "slow", "slow-bucket", "slow-image")

    def offered() -> int:
        rows = ec2.describe_availability_zones(ZoneNames=["verbose"])["AvailabilityZones"]
        return sum(int(r["State"].split()[0]) for r in rows if r["ZoneName"] == "|- m1.small")

    wait_for(lambda: offered() == INSTANCES, 60, 0.5, what=f"the zone offering {INSTANCES} m1.small")

    pid = world.fleet.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        answer = ec2.run_instances(ImageId=image, MinCount=INSTANCES, MaxCount=INSTANCES, InstanceType="m1.small")
        ids = [i["InstanceId"] for i in answer["Instances"]]
        time.sleep(FROZEN_SECONDS)  # the nodes stay frozen this long: the CC's calls to them time out meanwhile
    finally:
        os.kill(pid, signal.SIGCONT)
    assert "failed RunInstance: PeerUnreachable" in cloud.log("cc"), "no RunInstance call was left in doubt"

    wait_for(
        lambda: _states(ec2, ids, launching=True) == Counter({"running": INSTANCES}),
        120,
        1.0,
        what="every instance running",
    )

    # Exactly once each, as the nodes themselves say, and every core of every node taken by them.
    listings = world.ask_nodes("DescribeInstances", DescribeInstancesRequest(), DescribeInstancesResponse)
    live = Counter(i.instance_id for listing in listings for i in listing.instances if i.state != "Teardown")
    assert set(live) == set(ids) and set(live.values()) == {1}
    resources = world.ask_nodes("DescribeResource", None, DescribeResourceResponse)
    assert [(r.cores_available, r.instances) for r in resources] == [(0, CORES)] * NODES

    # The CC's books agree: each node holds its ten, no room left.
    def books() -> bool:
        return all((n.instances, n.cores_available) == (CORES, 0) for n in world.cc_nodes().nodes)

    wait_for(books, 30, 0.5, what="the CC's books: every node full with its own instances")

    ec2.terminate_instances(InstanceIds=ids)
    wait_for(lambda: _states(ec2, ids) == Counter({"terminated": INSTANCES}), 120, 1.0, what="all terminated")
    resources = world.ask_nodes("DescribeResource", None, DescribeResourceResponse)
    assert [(r.cores_available, r.instances) for r in resources] == [(CORES, 0)] * NODES
