"""A remote cloud that hangs or answers 500s: local launches go on as usual, a launch into the remote zone is
answered at once and started when the remote answers again (never twice), a remote that keeps failing is no longer
offered to new launches, and the zone is offered again once the remote answers."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from tests.bursting.support import BURST_ZONE
from tests.clc.compute_cloud import run_when_room, wait_state
from tests.clc.ec2_helpers import code
from tests.waiting import wait_for


def _launch(ec2, world, zone: str) -> str:
    answer = run_when_room(ec2, ImageId=world.local_image, MinCount=1, MaxCount=1, Placement={"AvailabilityZone": zone})
    return answer["Instances"][0]["InstanceId"]


def test_a_hanging_remote_does_not_hold_up_launches(world):
    ec2 = world.local_ec2()
    world.wait_zone(BURST_ZONE)
    world.proxy.set("hang")
    burst = _launch(ec2, world, BURST_ZONE)  # answered while the remote hangs
    wait_for(lambda: world.proxy.waiting >= 1, what="a call held by the hanging remote")

    local = _launch(ec2, world, "zone1")
    wait_state(ec2, [local], {"running"})  # started and running while the remote zone's calls hang
    assert world.proxy.waiting >= 1
    states = {
        i["InstanceId"]: i["State"]["Name"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
    }
    assert states[burst] == "pending"

    world.proxy.release()  # the held calls get a 503; the launch is tried again with the same ClientToken
    wait_state(ec2, [burst], {"running"})
    assert [i["LocalTags"]["koala-instance"] for i in world.remote_instances()] == [burst]
    ec2.terminate_instances(InstanceIds=[local, burst])
    wait_state(ec2, [local, burst], {"terminated"})
    wait_for(lambda: not world.remote_instances(), what="no live remote instance")


def test_a_remote_answering_500s_is_not_offered_and_comes_back(world):
    ec2 = world.local_ec2()
    world.wait_zone(BURST_ZONE)
    world.proxy.set("fail")
    try:
        # Once the remote zone's CC has seen the failures, the CLC no longer offers the zone's capacity.
        wait_for(lambda: not world.offers(BURST_ZONE), what="the failing remote zone offering nothing")
        with pytest.raises(ClientError) as refused:
            ec2.run_instances(
                ImageId=world.local_image, MinCount=1, MaxCount=1, Placement={"AvailabilityZone": BURST_ZONE}
            )
        assert code(refused) == "InsufficientInstanceCapacity" and BURST_ZONE in str(refused.value)
        local = _launch(ec2, world, "zone1")
        wait_state(ec2, [local], {"running"})
        ec2.terminate_instances(InstanceIds=[local])
        wait_state(ec2, [local], {"terminated"})
    finally:
        world.proxy.release()
    world.wait_zone(BURST_ZONE)  # polled with backoff, and offered again once it answers
    assert not world.remote_instances()
