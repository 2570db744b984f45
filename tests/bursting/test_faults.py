"""A remote cloud that hangs or answers 500s: local launches go on as usual, launches into the remote zone fail
with a clear reason instead of hanging, and the zone is offered again once the remote answers."""

from __future__ import annotations

import threading

import pytest
from botocore.exceptions import ClientError

from tests.bursting.support import BURST_ZONE
from tests.clc.compute_cloud import run_when_room, wait_state
from tests.clc.ec2_helpers import code
from tests.waiting import wait_for


def _launch_in_background(ec2, world, outcome: dict) -> threading.Thread:
    def launch() -> None:
        try:
            outcome["answer"] = ec2.run_instances(
                ImageId=world.local_image, MinCount=1, MaxCount=1, Placement={"AvailabilityZone": BURST_ZONE}
            )
        except ClientError as err:
            outcome["error"] = err

    thread = threading.Thread(target=launch)
    thread.start()
    return thread


def _local_launch(ec2, world) -> str:
    answer = run_when_room(
        ec2, ImageId=world.local_image, MinCount=1, MaxCount=1, Placement={"AvailabilityZone": "zone1"}
    )
    instance_id = answer["Instances"][0]["InstanceId"]
    wait_state(ec2, [instance_id], {"running"})
    return instance_id


def test_a_hanging_remote_does_not_hold_up_local_launches(world):
    ec2 = world.local_ec2()
    world.wait_zone(BURST_ZONE)
    world.proxy.set("hang")
    outcome: dict = {}
    thread = _launch_in_background(ec2, world, outcome)
    wait_for(lambda: world.proxy.waiting >= 1, what="a call held by the hanging remote")

    local = _local_launch(ec2, world)  # answered and running while the remote zone's call hangs
    assert thread.is_alive() and world.proxy.waiting >= 1
    zones = {z["ZoneName"]: z["State"] for z in ec2.describe_availability_zones()["AvailabilityZones"]}
    assert zones["zone1"] == "available"

    world.proxy.release()  # the held calls get a 503 now
    thread.join(60)
    assert "error" in outcome, (outcome, world.cc.log()[-3000:])
    assert outcome["error"].response["Error"]["Code"] == "InsufficientInstanceCapacity"
    assert "remote" in str(outcome["error"])
    ec2.terminate_instances(InstanceIds=[local])
    wait_state(ec2, [local], {"terminated"})
    assert not world.remote_instances()


def test_a_remote_answering_500s_is_not_offered_and_comes_back(world):
    ec2 = world.local_ec2()
    world.wait_zone(BURST_ZONE)
    world.proxy.set("fail")
    try:
        with pytest.raises(ClientError) as refused:
            ec2.run_instances(
                ImageId=world.local_image, MinCount=1, MaxCount=1, Placement={"AvailabilityZone": BURST_ZONE}
            )
        assert code(refused) == "InsufficientInstanceCapacity"
        local = _local_launch(ec2, world)
        # Once the remote zone's CC has seen the failures, the CLC no longer offers the zone's capacity.
        wait_for(lambda: not world.offers(BURST_ZONE), what="the failing remote zone offering nothing")
        ec2.terminate_instances(InstanceIds=[local])
        wait_state(ec2, [local], {"terminated"})
    finally:
        world.proxy.release()
    world.wait_zone(BURST_ZONE)  # polled with backoff, and offered again once it answers
    assert not world.remote_instances()
