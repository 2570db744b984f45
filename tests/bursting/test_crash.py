"""kill -9 of the remote zone's CC in the middle of launches: the remote cloud had started the instances, the CC
never heard its answers. After the restart the CC sends those launches again with the same ClientToken: the one
still wanted runs, once; the one terminated while the CC was down is terminated remotely too. Terminating the rest
leaves the remote cloud empty."""

from __future__ import annotations

from tests.bursting.support import BURST_ZONE
from tests.clc.compute_cloud import wait_state
from tests.waiting import wait_for


def _remote_by_local(world) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for instance in world.remote_instances():
        found.setdefault(instance["LocalTags"]["koala-instance"], []).append(instance["InstanceId"])
    return found


def test_kill_9_of_the_cc_mid_launch_leaves_no_orphan_and_no_duplicate(world):
    ec2 = world.local_ec2()
    world.wait_zone(BURST_ZONE)

    def launch() -> str:
        answer = ec2.run_instances(
            ImageId=world.local_image, MinCount=1, MaxCount=1, Placement={"AvailabilityZone": BURST_ZONE}
        )
        return answer["Instances"][0]["InstanceId"]

    before = launch()
    wait_state(ec2, [before], {"running"})

    world.proxy.set("hold_run")  # RunInstances reaches the remote; its answer does not come back
    kept, dropped = launch(), launch()  # accepted locally (pending) at once
    wait_for(lambda: world.proxy.waiting >= 2, what="both RunInstances answers held")
    wait_for(lambda: {kept, dropped} <= set(_remote_by_local(world)), what="the remote started both")
    world.cc.kill()
    world.proxy.release()
    ec2.terminate_instances(InstanceIds=[dropped])  # while the CC is down: the CLC keeps asking

    world.cc.start()
    wait_state(ec2, [kept], {"running"})
    wait_state(ec2, [dropped], {"terminated"})
    wait_for(lambda: set(_remote_by_local(world)) == {before, kept}, what="the dropped launch gone remotely")
    remote = _remote_by_local(world)
    assert len(remote[before]) == 1 and len(remote[kept]) == 1  # sent again after the restart, started once
    assert "Traceback" not in world.cc.log()

    ec2.terminate_instances(InstanceIds=[before, kept])
    wait_state(ec2, [before, kept], {"terminated"})
    wait_for(lambda: not world.remote_instances(), what="no live remote instance")
