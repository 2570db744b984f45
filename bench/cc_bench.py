"""Cluster Controller figures (issue 6), printed as JSON.

1. placement: one decision of each SCHEDPOLICY over a snapshot of 10,000 heterogeneous nodes (target: at most
   1 ms per instance), single decisions and a batch of 1,000; the same-run baseline is a bare pass over the
   snapshot checking fit, the least any scanning policy must do.
2. fanout: one real CC process and N real NC processes (libvirt's test driver, 64 fake CPUs each), one
   RunInstances of 1,000 instances, timed until the CC reports every one Extant (or ended by its node); the CC's
   resident memory before and after. The same-run baseline is one RunInstances of one instance per node.

    .venv/bin/python bench/cc_bench.py [--nodes 50] [--instances 1000] [--skip-fanout]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.cluster_controller.placement import POLICIES, Need, NodeCapacity, NodeState


def snapshot(count: int, seed: int = 6) -> list[NodeCapacity]:
    rng = random.Random(seed)
    states = [NodeState.UP] * 90 + [NodeState.DOWN] * 5 + [NodeState.ASLEEP] * 3 + [NodeState.WAKING] * 2
    return [
        NodeCapacity(
            f"http://10.{i >> 8 & 255}.{i & 255}.1:8775",
            rng.choice(states),
            rng.randint(0, 65536),
            rng.randint(0, 2000),
            rng.randint(0, 64),
            rng.randint(0, 40),
        )
        for i in range(count)
    ]


def timed(func, repeat: int) -> float:
    """Median seconds of `repeat` calls."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def bench_placement(nodes: int) -> dict:
    snap = snapshot(nodes)
    need = Need(cores=2, memory_mb=4096, disk_gb=40)

    def baseline() -> int:
        m, d, c = need.memory_mb, need.disk_gb, need.cores
        return sum(1 for n in snap if n.cores >= c and n.memory_mb >= m and n.disk_gb >= d and n.state != "DOWN")

    base = timed(baseline, 30)
    result: dict = {
        "nodes": nodes,
        "baseline_fit_scan_ms": round(base * 1e3, 4),
        "target_ms_per_instance": 1.0,
        "policies": {},
    }
    for name, policy in POLICIES.items():
        # Cursor in the middle, so ROUNDROBIN starts off the front of the list.
        single = timed(lambda p=policy: p(snap, need, 1, nodes // 2), 30)
        batch = timed(lambda p=policy: p(snap, need, 1000, nodes // 2), 5)
        placed = len(policy(snap, need, 1000, nodes // 2).picks)
        result["policies"][name] = {
            "single_ms": round(single * 1e3, 4),
            "batch_1000_ms_per_instance": round(batch * 1e3 / 1000, 4),
            "placed_of_1000": placed,
            "single_vs_baseline": round(single / base, 3),
            "within_target": single <= 1e-3 and batch / 1000 <= 1e-3,
        }
    result["cc_decision"] = bench_cc_decision(nodes, need)
    return result


def bench_cc_decision(nodes: int, need: Need) -> dict:
    """The decision as the CC makes it: its snapshot brought up to date (the node an instance just went to
    changed), then the policy; and, for comparison, rebuilding the whole snapshot every time."""
    from services.cluster_controller.cluster import Cluster
    from services.cluster_controller.config import ClusterControllerConfig
    from services.cluster_controller.model import Node

    with tempfile.TemporaryDirectory() as tmp:
        config = ClusterControllerConfig(
            KOALA_SERVICE_ID="cc-bench", KOALA_STATE_DIR=tmp, KOALA_PKI_DIR=tmp, KOALA_ZONE="z", KOALA_CLC_URL=""
        )
    cluster = Cluster(config, None, None)  # type: ignore[arg-type]  # no RPC or database touched here
    for source in snapshot(nodes):
        node = cluster._add_node(Node(url=source.key, source="config"))
        node.memory_max_mb, node.disk_max_gb, node.cores_max = 65536, 2000, 64
        node.nc_memory_mb, node.nc_disk_gb, node.nc_cores = source.memory_mb, source.disk_gb, source.cores
        node.reported_at = 1.0
        node.set_state(source.state)
    cluster.snapshot()
    order = list(cluster.nodes.values())
    out = {}
    for name in ("ROUNDROBIN", "LOAD"):
        policy = POLICIES[name]

        def decide(policy=policy) -> None:
            order[random.randrange(nodes)].touch()
            policy(cluster.snapshot()[1], need, 1, nodes // 2)

        def rebuild(policy=policy) -> None:
            policy([n.capacity() for n in order], need, 1, nodes // 2)

        out[name] = {
            "incremental_ms": round(timed(decide, 30) * 1e3, 4),
            "full_rebuild_ms": round(timed(rebuild, 5) * 1e3, 4),
        }
    return out


def rss_kb(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_fanout(node_count: int, instances: int) -> dict:
    from tests.cc.conftest import Cluster, make_cluster

    tmp = Path(tempfile.mkdtemp(prefix="cc-bench-"))
    per_node = -(-instances // node_count)
    cloud, nodes, clc = make_cluster(
        tmp / "cloud",
        {f"b{i:03d}": per_node for i in range(node_count)},
        cc_settings={"NC_POLLING_FREQUENCY": 2, "KOALA_NC_TIMEOUT": 10, "SCHEDPOLICY": "STRIPING"},
        start=False,
        node_settings={
            "MAX_MEM": per_node * 128,
            "KOALA_NC_MONITOR_SECONDS": 5,
            "KOALA_PEER_POLL_SECONDS": 30,
        },
    )
    try:
        started = time.monotonic()
        for node in nodes.values():
            node.start(timeout=300)
        cloud.start("cc")
        h = Cluster(cloud, nodes, clc)
        h.wait(lambda: sum(n.state == "UP" for n in h.nodes_info().values()) == node_count, "nodes UP", 300)
        bring_up = time.monotonic() - started
        cc_pid = cloud.processes["cc"].pid
        idle = rss_kb(cc_pid)

        def launch(ids: list[str], reservation: str) -> tuple[float, dict[str, int], list[str]]:
            """Seconds until every instance settled (Extant, or Teardown if its node failed it), the count
            per state, and the first few failure reasons."""
            start = time.monotonic()
            answer = h.run(ids, min_count=len(ids), reservation=reservation)
            failed = [p for p in answer.instances if p.error]
            if failed:
                raise RuntimeError(f"{len(failed)} not placed: {failed[0].error}")
            wanted = set(ids)

            def settled() -> list | None:
                mine = [i for i in h.instances().values() if i.instance_id in wanted]
                return mine if all(i.state in ("Extant", "Teardown") for i in mine) else None

            final = h.wait(settled, "all Extant", timeout=1800)
            elapsed = time.monotonic() - start
            counts = {state: sum(i.state == state for i in final) for state in ("Extant", "Teardown")}
            reasons = sorted({i.reason for i in final if i.state == "Teardown"})[:3]
            return elapsed, counts, reasons

        def terminate(ids: list[str]) -> None:
            from common.messages import clc_cc

            h.call("TerminateInstances", clc_cc.InstanceIdsRequest(instance_ids=ids), clc_cc.TerminateInstancesResponse)
            h.wait(lambda: all(h.instances()[i].state == "Teardown" for i in ids), "Teardown", 600)

        base_ids = [f"i-{n:08x}" for n in range(0x100000, 0x100000 + node_count)]
        base_time, _, _ = launch(base_ids, "r-0000b000")
        terminate(base_ids)
        h.wait(lambda: h.resources().available == per_node * node_count, "capacity back", 120)
        ids = [f"i-{n:08x}" for n in range(1, instances + 1)]
        cpu_before = cpu_seconds(cc_pid)
        run_time, counts, reasons = launch(ids, "r-0000b001")
        cc_cpu = cpu_seconds(cc_pid) - cpu_before
        loaded = rss_kb(cc_pid)
        pushed = list(clc.states().values()).count("Extant")
        return {
            "nodes": node_count,
            "instances": instances,
            "bring_up_s": round(bring_up, 1),
            "baseline_one_per_node_s": round(base_time, 2),
            "run_until_all_settled_s": round(run_time, 2),
            "instances_per_s": round(instances / run_time, 1),
            "vs_baseline": round(run_time / base_time, 2),
            "extant": counts["Extant"],
            "failed_by_nodes": counts["Teardown"],  # instances an NC ended on its own (reasons below)
            "failure_reasons": reasons,
            "extant_pushed_to_clc": pushed,
            "cc_cpu_s_during_run": round(cc_cpu, 2),  # the rest of the time is the NCs staging on 2 cores
            "cc_rss_idle_mb": round(idle["VmRSS"] / 1024, 1),
            "cc_rss_loaded_mb": round(loaded["VmRSS"] / 1024, 1),
            "cc_rss_peak_mb": round(loaded["VmHWM"] / 1024, 1),
        }
    finally:
        cloud.stop()
        clc.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # a thousand instances' disks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--placement-nodes", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=50, help="NC processes for the fan-out run")
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--skip-fanout", action="store_true")
    args = parser.parse_args()
    report = {"placement": bench_placement(args.placement_nodes)}
    if not args.skip_fanout:
        report["fanout"] = bench_fanout(args.nodes, args.instances)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
