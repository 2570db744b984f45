"""kill -9 of the remote zone's CC in the middle of a launch: the remote cloud had started the instance, the CC
never heard its answer. After the restart nothing is left running remotely for the failed launch, the instance
launched before the crash still runs (once), and terminating it leaves the remote cloud empty."""

from __future__ import annotations

import threading

from botocore.exceptions import ClientError

from tests.bursting.support import BURST_ZONE
from tests.clc.compute_cloud import wait_state
from tests.waiting import wait_for


def _local_ids(world) -> list[str]:
    return sorted(i["LocalTags"]["koala-instance"] for i in world.remote_instances())


def test_kill_9_of_the_cc_mid_launch_leaves_no_orphan(world):
    ec2 = world.local_ec2()
    world.wait_zone(BURST_ZONE)
    placement = {"AvailabilityZone": BURST_ZONE}
    before = ec2.run_instances(ImageId=world.local_image, MinCount=1, MaxCount=1, Placement=placement)
    survivor = before["Instances"][0]["InstanceId"]
    wait_state(ec2, [survivor], {"running"})

    world.proxy.set("hold_run")  # the next RunInstances reaches the remote; its answer does not come back
    outcome: dict[str, object] = {}

    def launch() -> None:
        try:
            outcome["answer"] = ec2.run_instances(
                ImageId=world.local_image, MinCount=1, MaxCount=1, Placement=placement
            )
        except ClientError as err:
            outcome["error"] = err

    thread = threading.Thread(target=launch)
    thread.start()
    wait_for(lambda: world.proxy.waiting >= 1, what="the RunInstances answer held")
    started = wait_for(lambda: [i for i in _local_ids(world) if i != survivor], what="the remote started it")
    world.cc.kill()
    thread.join(60)
    assert "error" in outcome, outcome  # the user's launch failed: the CC died before answering
    world.proxy.release()

    world.cc.start()
    wait_for(lambda: _local_ids(world) == [survivor], what="the half-launched remote instance terminated")
    states = {
        i["InstanceId"]: i["State"]["Name"]
        for r in ec2.describe_instances(InstanceIds=[survivor, *started])["Reservations"]
        for i in r["Instances"]
    }
    assert states[survivor] == "running"
    assert states[started[0]] == "terminated"
    assert "Traceback" not in world.cc.log()

    ec2.terminate_instances(InstanceIds=[survivor])
    wait_state(ec2, [survivor], {"terminated"})
    wait_for(lambda: not world.remote_instances(), what="no live remote instance")
