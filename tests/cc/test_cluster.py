"""The CC end to end: a real CC process and three real NC processes on libvirt's test driver.

Nodes a, b and c offer 12, 12 and 6 cores: exactly 30 m1.small (1 core each). Tests run in file order on
one module-scoped cluster and each leaves it empty.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from common.messages import cc_nc, clc_cc
from common.rpc import RpcError
from tests.cc.conftest import SMALL, Cluster, keep_domains

LIVE = ("Pending", "Extant")


def ids(start: int, count: int) -> list[str]:
    return [f"i-{n:08x}" for n in range(start, start + count)]


def capacity_problems(h: Cluster) -> list[str]:
    """Where the CC's accounting disagrees with its instances, with the NCs' own numbers, or with
    DescribeResources; empty when everything is consistent."""
    problems = []
    nodes, instances = h.nodes_info(), h.instances()
    expected_available = expected_max = 0
    for node_id, node in nodes.items():
        live = [i for i in instances.values() if i.node_id == node_id and i.state in (*LIVE, "Unknown")]
        if node.instances != len(live):
            problems.append(f"{node_id}: CC counts {node.instances} instances, reports {len(live)} live")
        if node.state == "DOWN":
            if any(i.state != "Unknown" for i in live):
                problems.append(f"{node_id} is DOWN but reports {[i.state for i in live]}")
            continue
        if node.cores_available != node.cores_max - len(live):
            problems.append(f"{node_id}: {node.cores_available} cores free of {node.cores_max}, {len(live)} used")
        own = h.call_node(
            h.nodes[node_id.removeprefix("nc-")], "DescribeResource", None, cc_nc.DescribeResourceResponse
        )
        if own.cores_available != node.cores_available:
            problems.append(f"{node_id}: the NC says {own.cores_available} cores free, the CC {node.cores_available}")
        expected_available += min(node.cores_available, node.memory_available_mb // 128, node.disk_available_gb)
        expected_max += min(node.cores_max, node.memory_max_mb // 128, node.disk_max_gb)
    resources = h.resources()
    if (resources.available, resources.max) != (expected_available, expected_max):
        problems.append(
            f"DescribeResources {resources.available}/{resources.max}, nodes say {expected_available}/{expected_max}"
        )
    return problems


def consistent(h: Cluster) -> None:
    last: list[str] = []

    def check() -> bool:
        last[:] = capacity_problems(h)
        return not last

    try:
        h.wait(check, "consistent capacities", timeout=30)
    except AssertionError:
        raise AssertionError("; ".join(last)) from None


def test_roles_are_enforced(cluster: Cluster) -> None:
    admin = cluster.cloud.aio.admin_client()

    async def as_admin():
        try:
            nodes = await admin.call(cluster.cc_url, "DescribeNodes", None, clc_cc.DescribeNodesResponse)
            with pytest.raises(RpcError) as refused:
                await admin.call(
                    cluster.cc_url,
                    "TerminateInstances",
                    clc_cc.InstanceIdsRequest(instance_ids=["i-00000001"]),
                    clc_cc.TerminateInstancesResponse,
                )
            return nodes, refused.value
        finally:
            await admin.close()

    nodes, refused = asyncio.run(as_admin())
    assert nodes.zone == "zone1" and nodes.policy == "ROUNDROBIN" and len(nodes.nodes) == 3
    assert refused.status == 403 and refused.code == "RoleNotAllowed"
    with pytest.raises(RpcError) as bad:
        cluster.call("RunInstances", clc_cc.InstanceIdsRequest(), clc_cc.RunInstancesResponse)
    assert bad.value.status == 400 and bad.value.code == "InvalidRequest"
    with pytest.raises(RpcError) as malformed:
        cluster.run(["i-00000001", "../../etc"])
    assert malformed.value.status == 400 and malformed.value.code == "InvalidInstanceID.Malformed"
    with pytest.raises(RpcError) as too_many:
        cluster.run(["i-00000001"], min_count=2)
    assert too_many.value.status == 400 and "min_count" in too_many.value.message
    # The largest request the interface allows gets an answer, not a refusal of its size.
    huge = cluster.run([f"i-{n:08x}" for n in range(0x10000, 0x10000 + 10000)], min_count=10000)
    assert len(huge.instances) == 10000 and all("30 of 10000" in p.error for p in huge.instances)
    assert cluster.instances() == {}


def test_launch_30_kill_a_node_restart_it_terminate_all(cluster: Cluster) -> None:
    h = cluster
    consistent(h)
    assert (h.resources().available, h.resources().max) == (30, 30)

    # MinCount: 31 asked, 31 required, 30 fit -> nothing starts.
    answer = h.run(ids(1, 31), min_count=31)
    assert all(p.error.startswith("InsufficientInstanceCapacity") and not p.node_id for p in answer.instances)
    assert "30 of 31" in answer.instances[0].error
    assert h.instances() == {} and h.resources().available == 30

    # 30 fit exactly, spread round-robin.
    answer = h.run(ids(1, 30), min_count=30)
    assert [p.error for p in answer.instances] == [""] * 30
    assert [p.node_id for p in answer.instances[:4]] == ["nc-a", "nc-b", "nc-c", "nc-a"]
    assert h.resources().available == 0  # reserved at placement, before any node answered
    retried = h.run(ids(1, 30), min_count=30)  # the CLC retrying the same request: the same answer
    assert [(p.instance_id, p.node_id) for p in retried.instances] == [
        (p.instance_id, p.node_id) for p in answer.instances
    ]
    with pytest.raises(RpcError) as duplicate:
        h.run(ids(30, 1), reservation="r-0000000f")
    assert duplicate.value.status == 409 and duplicate.value.code == "InvalidInstanceID.Duplicate"
    h.wait(lambda: all(i.state == "Extant" for i in h.instances().values()), "30 Extant")
    h.wait(lambda: list(h.clc.states().values()).count("Extant") == 30, "30 Extant pushed to the CLC")
    consistent(h)
    per_node = {n: i.instances for n, i in h.nodes_info().items()}
    assert per_node == {"nc-a": 12, "nc-b": 12, "nc-c": 6}

    # Full: one more fails with a clear reason and is never reported started.
    answer = h.run(ids(100, 1), reservation="r-00000002")
    assert answer.instances[0].error.startswith("InsufficientInstanceCapacity") and not answer.instances[0].node_id
    assert "i-00000064" not in h.instances() and "i-00000064" not in h.clc.states()

    # A node dies: DOWN, its instances Unknown (not terminated), its capacity no longer counted.
    on_c = sorted(i for i, r in h.instances().items() if r.node_id == "nc-c")
    assert len(on_c) == 6
    launched_on_c = {i: r.launch_time for i, r in h.instances().items() if i in on_c}
    h.nodes["c"].kill()
    h.wait(lambda: h.nodes_info()["nc-c"].state == "DOWN", "nc-c DOWN")
    h.wait(lambda: all(h.clc.states()[i] == "Unknown" for i in on_c), "Unknown pushed")
    reported = h.instances()
    assert all(reported[i].state == "Unknown" for i in on_c)
    assert sum(r.state == "Extant" for r in reported.values()) == 24
    assert (h.resources().available, h.resources().max) == (0, 24)
    consistent(h)

    # The NC comes back (its hypervisor kept the domains): UP again, the same instances Extant, untouched.
    keep_domains(h.nodes["c"])
    h.nodes["c"].start()
    h.wait(lambda: h.nodes_info()["nc-c"].state == "UP", "nc-c UP again")
    h.wait(lambda: all(h.instances()[i].state == "Extant" for i in on_c), "nc-c's instances Extant again")
    h.wait(lambda: all(h.clc.states()[i] == "Extant" for i in on_c), "their state pushed")
    assert {i: r.launch_time for i, r in h.instances().items() if i in on_c} == launched_on_c
    consistent(h)
    assert h.resources().available == 0

    # Terminate everything: all Teardown, every core free again, on the CC and on every NC.
    answer = h.call(
        "TerminateInstances", clc_cc.InstanceIdsRequest(instance_ids=ids(1, 30)), clc_cc.TerminateInstancesResponse
    )
    assert sorted(answer.instance_ids) == ids(1, 30)
    h.wait(lambda: all(i.state == "Teardown" for i in h.instances().values()), "30 Teardown")
    h.wait(lambda: set(h.clc.states().values()) == {"Teardown"}, "Teardown pushed")
    consistent(h)
    assert (h.resources().available, h.resources().max) == (30, 30)


def test_a_blip_is_not_a_termination(cluster: Cluster) -> None:
    """A node that stops answering for a while (its process frozen) is DOWN with its instances Unknown; when
    it answers again they are Extant as before: nothing was terminated or re-run. A termination asked for
    meanwhile waits for the node and then happens."""
    h = cluster
    h.run(ids(500, 6), reservation="r-00000006")  # round-robin over three empty nodes: two each
    h.wait(lambda: all(h.instances()[i].state == "Extant" for i in ids(500, 6)), "6 Extant")
    before = {i: (r.node_id, r.launch_time) for i, r in h.instances().items() if i in ids(500, 6)}
    frozen = h.nodes["a"].process
    assert frozen is not None
    on_a = [i for i, (node, _) in before.items() if node == "nc-a"]
    assert len(on_a) == 2
    frozen.send_signal(signal.SIGSTOP)
    try:
        h.wait(lambda: h.nodes_info()["nc-a"].state == "DOWN", "nc-a DOWN")
        assert all(h.instances()[i].state == "Unknown" for i in on_a)
        h.wait(lambda: all(h.clc.states()[i] == "Unknown" for i in on_a), "Unknown pushed")
        # One stuck node does not stall the others: launches go on, on the nodes that answer.
        answer = h.run(ids(510, 2), reservation="r-00000016")
        assert {p.node_id for p in answer.instances} == {"nc-b", "nc-c"}
        h.wait(lambda: all(h.instances()[i].state == "Extant" for i in ids(510, 2)), "Extant beside a stuck node")
        # Terminating an instance of the stuck node: accepted, done when the node answers again.
        answer = h.call(
            "TerminateInstances", clc_cc.InstanceIdsRequest(instance_ids=on_a[:1]), clc_cc.TerminateInstancesResponse
        )
        assert answer.instance_ids == on_a[:1] and h.instances()[on_a[0]].state == "Unknown"
    finally:
        frozen.send_signal(signal.SIGCONT)
    h.wait(lambda: h.nodes_info()["nc-a"].state == "UP", "nc-a UP")
    h.wait(lambda: h.instances()[on_a[0]].state == "Teardown", "the deferred termination")
    kept = [i for i in ids(500, 6) if i != on_a[0]]
    h.wait(lambda: all(h.instances()[i].state == "Extant" for i in kept), "Extant again")
    assert {i: (r.node_id, r.launch_time) for i, r in h.instances().items() if i in kept} == {
        i: before[i] for i in kept
    }
    node_a = h.call_node(
        h.nodes["a"], "DescribeInstances", cc_nc.DescribeInstancesRequest(), cc_nc.DescribeInstancesResponse
    )
    assert {i.instance_id: i.state for i in node_a.instances if i.instance_id in on_a} == {
        on_a[0]: "Teardown",
        on_a[1]: "Extant",
    }
    consistent(h)
    everything = ids(500, 6) + ids(510, 2)
    h.call("TerminateInstances", clc_cc.InstanceIdsRequest(instance_ids=everything), clc_cc.TerminateInstancesResponse)
    h.wait(lambda: all(h.instances()[i].state == "Teardown" for i in everything), "Teardown")
    consistent(h)


def test_cc_crash_in_the_middle_of_a_launch(cluster: Cluster) -> None:
    """The CC is killed while RunInstance calls to a stuck node are in flight; after its restart every instance
    runs exactly once: those the node got are confirmed, none is sent twice or to a second node."""
    h = cluster
    stuck = h.nodes["a"].process
    assert stuck is not None
    stuck.send_signal(signal.SIGSTOP)  # the CC still believes nc-a is UP for a poll timeout or so
    try:
        answer = h.run(ids(700, 6), reservation="r-00000008")
        on_a = [p.instance_id for p in answer.instances if p.node_id == "nc-a"]
        assert on_a, [p.node_id for p in answer.instances]
        h.cloud.kill("cc")
    finally:
        stuck.send_signal(signal.SIGCONT)
    h.cloud.start("cc")
    h.wait(lambda: all(h.instances()[i].state == "Extant" for i in ids(700, 6)), "all 6 Extant after the crash")
    placed = {i: r.node_id for i, r in h.instances().items() if i in ids(700, 6)}
    assert all(placed[i] == "nc-a" for i in on_a)
    held = {}
    for name, node in h.nodes.items():
        listing = h.call_node(
            node, "DescribeInstances", cc_nc.DescribeInstancesRequest(), cc_nc.DescribeInstancesResponse
        )
        for info in listing.instances:
            if info.instance_id in placed and info.state != "Teardown":
                assert info.instance_id not in held, f"{info.instance_id} runs twice"
                held[info.instance_id] = f"nc-{name}"
    assert held == placed
    consistent(h)
    h.call("TerminateInstances", clc_cc.InstanceIdsRequest(instance_ids=ids(700, 6)), clc_cc.TerminateInstancesResponse)
    h.wait(lambda: all(h.instances()[i].state == "Teardown" for i in ids(700, 6)), "Teardown")
    consistent(h)


def test_a_node_that_lost_its_instances(cluster: Cluster) -> None:
    """An NC restarted on a hypervisor that lost its domains reports them gone: the CC ends them with the
    node's reason and frees their capacity; the other nodes' instances are untouched."""
    h = cluster
    h.run(ids(600, 3), reservation="r-00000007")
    h.wait(lambda: all(h.instances()[i].state == "Extant" for i in ids(600, 3)), "3 Extant")
    on_b = [i for i in ids(600, 3) if h.instances()[i].node_id == "nc-b"]
    assert len(on_b) == 1
    h.nodes["b"].kill()
    h.wait(lambda: h.nodes_info()["nc-b"].state == "DOWN", "nc-b DOWN")
    h.nodes["b"].start()  # its node file lists no domains: the hypervisor lost them
    h.wait(lambda: h.instances()[on_b[0]].state == "Teardown", "the lost instance ended")
    assert h.instances()[on_b[0]].reason
    assert all(h.instances()[i].state == "Extant" for i in ids(600, 3) if i not in on_b)
    h.wait(lambda: h.nodes_info()["nc-b"].state == "UP", "nc-b UP")
    consistent(h)
    h.call("TerminateInstances", clc_cc.InstanceIdsRequest(instance_ids=ids(600, 3)), clc_cc.TerminateInstancesResponse)
    h.wait(lambda: all(h.instances()[i].state == "Teardown" for i in ids(600, 3)), "Teardown")
    consistent(h)


def test_node_failure_is_retried_once_then_failed(cluster: Cluster) -> None:
    """Every NC refuses an instance on a bridge that cannot exist: tried on two nodes, then failed; the
    capacity it held is released."""
    h = cluster
    answer = h.run(ids(200, 1), reservation="r-00000003", bridge="no such bridge!")
    assert answer.instances[0].node_id and not answer.instances[0].error  # placed: the nodes refuse later
    h.wait(lambda: h.instances()["i-000000c8"].state == "Teardown", "the refused instance failed")
    failed = h.instances()["i-000000c8"]
    assert failed.reason.startswith("failed") and "2 nodes" in failed.reason, failed.reason
    assert h.clc.states()["i-000000c8"] == "Teardown"
    consistent(h)
    assert h.resources().available == 30


def test_cc_restart_keeps_running_instances(cluster: Cluster) -> None:
    h = cluster
    answer = h.run(ids(300, 6), reservation="r-00000004")
    assert all(not p.error for p in answer.instances)
    h.wait(lambda: all(h.instances()[i].state == "Extant" for i in ids(300, 6)), "6 Extant")
    before = {i: (r.node_id, r.launch_time) for i, r in h.instances().items() if r.state == "Extant"}
    nc_before = {
        name: {
            i.instance_id: i.launch_time
            for i in h.call_node(
                node, "DescribeInstances", cc_nc.DescribeInstancesRequest(), cc_nc.DescribeInstancesResponse
            ).instances
            if i.state == "Extant"
        }
        for name, node in h.nodes.items()
    }
    h.cloud.stop("cc")
    h.cloud.start("cc")
    h.wait(lambda: all(n.state == "UP" for n in h.nodes_info().values()), "nodes UP after the restart")
    after = {i: (r.node_id, r.launch_time) for i, r in h.instances().items() if r.state == "Extant"}
    assert after == before
    nc_after = {
        name: {
            i.instance_id: i.launch_time
            for i in h.call_node(
                node, "DescribeInstances", cc_nc.DescribeInstancesRequest(), cc_nc.DescribeInstancesResponse
            ).instances
            if i.state == "Extant"
        }
        for name, node in h.nodes.items()
    }
    assert nc_after == nc_before  # nothing was re-run or terminated
    consistent(h)
    assert h.resources().available == 24
    h.call("TerminateInstances", clc_cc.InstanceIdsRequest(instance_ids=ids(300, 6)), clc_cc.TerminateInstancesResponse)
    h.wait(lambda: all(h.instances()[i].state == "Teardown" for i in ids(300, 6)), "6 Teardown")
    consistent(h)


def test_register_and_deregister_nodes(cluster: Cluster) -> None:
    h = cluster
    extra = h.cloud.add_node("d", extra={"HYPERVISOR": "test", "MAX_CORES": 2, "KOALA_WALRUS_URL": ""})
    info = h.call("RegisterNode", clc_cc.RegisterNodeRequest(node=extra.url, mac="52:54:00:12:34:56"), clc_cc.NodeInfo)
    assert info.source == "registered" and info.state == "DOWN" and info.mac == "52:54:00:12:34:56"
    extra.start()
    h.wait(lambda: h.nodes_info().get("nc-d") and h.nodes_info()["nc-d"].state == "UP", "nc-d UP")
    assert h.resources().max == 32
    for bad, code in (("bad host/x", "InvalidNode"), ("127.0.0.1:99999", "InvalidNode")):
        with pytest.raises(RpcError) as refused:
            h.call("RegisterNode", clc_cc.RegisterNodeRequest(node=bad), clc_cc.NodeInfo)
        assert refused.value.status == 400 and refused.value.code == code
    with pytest.raises(RpcError) as refused:
        h.call("RegisterNode", clc_cc.RegisterNodeRequest(node=extra.url, mac="nope"), clc_cc.NodeInfo)
    assert refused.value.code == "InvalidMac"
    with pytest.raises(RpcError) as refused:
        h.call("DeregisterNode", clc_cc.DeregisterNodeRequest(node=h.nodes["a"].url), clc_cc.Ack)
    assert refused.value.status == 409 and refused.value.code == "NodeInConfig"
    # Registered nodes survive a CC restart.
    h.cloud.stop("cc")
    h.cloud.start("cc")
    h.wait(lambda: h.nodes_info().get("nc-d") and h.nodes_info()["nc-d"].state == "UP", "nc-d UP after restart")
    h.call("DeregisterNode", clc_cc.DeregisterNodeRequest(node=extra.url), clc_cc.Ack)
    assert "nc-d" not in h.nodes_info() and h.resources().max == 30
    with pytest.raises(RpcError) as refused:
        h.call("DeregisterNode", clc_cc.DeregisterNodeRequest(node=extra.url), clc_cc.Ack)
    assert refused.value.status == 404
    extra.stop()


def test_console_and_reboot_go_to_the_node(cluster: Cluster) -> None:
    h = cluster
    h.run(ids(400, 1), reservation="r-00000005")
    h.wait(lambda: h.instances()["i-00000190"].state == "Extant", "Extant")
    rebooted = h.call(
        "RebootInstances",
        clc_cc.InstanceIdsRequest(instance_ids=["i-00000190", "i-0badbad0"]),
        clc_cc.RebootInstancesResponse,
    )
    assert rebooted.instance_ids == ["i-00000190"]
    console = h.call(
        "GetConsoleOutput", clc_cc.ConsoleOutputRequest(instance_id="i-00000190"), clc_cc.ConsoleOutputResponse
    )
    assert console.instance_id == "i-00000190"
    with pytest.raises(RpcError) as missing:
        h.call("GetConsoleOutput", clc_cc.ConsoleOutputRequest(instance_id="i-0badbad0"), clc_cc.ConsoleOutputResponse)
    assert missing.value.status == 404
    h.call(
        "TerminateInstances", clc_cc.InstanceIdsRequest(instance_ids=["i-00000190"]), clc_cc.TerminateInstancesResponse
    )
    h.wait(lambda: h.instances()["i-00000190"].state == "Teardown", "Teardown")
    consistent(h)


def test_describe_resources_per_vm_type(cluster: Cluster) -> None:
    h = cluster
    big = cc_nc.VmType(name="m1.large", cores=4, memory_mb=512, disk_gb=10)
    answer = h.call(
        "DescribeResources", clc_cc.DescribeResourcesRequest(vm_types=[SMALL, big]), clc_cc.DescribeResourcesResponse
    )
    by_type = {r.vm_type: (r.available, r.max) for r in answer.resources}
    assert by_type["m1.small"] == (30, 30)
    assert by_type["m1.large"] == (3 + 3 + 1, 3 + 3 + 1)  # floor(min(cores/4, 2048/512, disk/10)) per node
    assert answer.nodes_up == 3 and answer.nodes_total == 3
