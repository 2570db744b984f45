"""Lease scheduler figures (issue 20), printed as JSON.

1. decision: one on-demand launch decision of the CLC's admission (quotas, the zone's capacity token and the
   slot-table claim: `Launcher.admit`) in a zone of 100 nodes holding 1,000 accepted capacity reservations and
   5,000 queued spot requests, p50/p99 over repeated decisions (target p50 <= 10 ms). Same-run baseline: the same
   decision in a zone of 100 nodes without leases (admission as it was before the slot table). The scheduler,
   engine and stores are the real ones over a real SQLite database; the zone's nodes and capacity report are
   given as its CC would answer (no CC process: the decision makes no call). Also: one FIFO-with-backfilling
   plan of the 5,000 queued requests (`plan_queue`).
2. drain: real CLC, Walrus, CC and NC processes (libvirt's test driver): 1,000 on-demand instances fill the
   nodes, 1,000 one-time spot requests wait in the queue; all on-demand instances are terminated at once and the
   time until every spot request is `active` is measured (target < 10 s). Same-run baseline: the time until the
   EC2 API shows the 1,000 terminations (the capacity freeing that the queue waits for).

    .venv/bin/python bench/lease_bench.py [--decisions 300] [--drain 1000] [--skip-drain]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.messages.clc_cc import DescribeResourcesResponse, NodeInfo, ResourceAvailability
from services.cloud_controller.compute.cc_client import ClusterClient
from services.cloud_controller.compute.engine import Compute, Settings
from services.cloud_controller.compute.errors import ComputeError
from services.cloud_controller.compute.launch import RunRequest
from services.cloud_controller.database import open_clc_database
from services.cloud_controller.leases.scheduler import LeaseScheduler
from services.cloud_controller.leases.slottable import plan_queue
from services.cloud_controller.leases.spot import Owner
from services.cloud_controller.leases.store import LeaseStore

TARGET_DECISION_P50_MS = 10.0
TARGET_DRAIN_S = 10.0
NODES = 100
NODE_CORES, NODE_MEMORY, NODE_DISK = 32, 65536, 2000


@dataclass
class Principal:
    account_id: str
    user_id: str = ""
    is_admin: bool = False


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * fraction), len(ordered) - 1)]


async def decision_bench(decisions: int, reservations: int, queued: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="lease-bench-") as tmp:
        state = Path(tmp)
        db = await open_clc_database(state)
        zones = {"leased": "http://127.0.0.1:9", "plain": "http://127.0.0.1:9"}
        compute = Compute(db, ClusterClient(None, zones), Settings(poll_interval=3600))  # type: ignore[arg-type]
        await compute.load()
        store = await LeaseStore.open(state)
        scheduler = LeaseScheduler(compute, store)
        compute.leases = scheduler
        types = compute.vmtypes.list()
        for zone in zones:
            nodes = {
                f"{zone}-nc{i:03d}": NodeInfo(
                    url=f"http://{zone}-{i}",
                    node_id=f"{zone}-nc{i:03d}",
                    state="UP",
                    source="config",
                    memory_max_mb=NODE_MEMORY,
                    disk_max_gb=NODE_DISK,
                    cores_max=NODE_CORES,
                )
                for i in range(NODES)
            }
            scheduler.set_nodes(zone, nodes)
            report = DescribeResourcesResponse(
                zone=zone,
                resources=[
                    ResourceAvailability(
                        vm_type=vm.name,
                        available=NODES * min(NODE_CORES // vm.cores, NODE_MEMORY // vm.memory_mb),
                        max=NODES * min(NODE_CORES // vm.cores, NODE_MEMORY // vm.memory_mb),
                    )
                    for vm in types
                ],
                nodes_up=NODES,
                nodes_total=NODES,
            )
            compute.admission.update(report, compute.admission.clock())
        rng = random.Random(20)
        now = time.time()
        accepted = refused = 0
        started = time.perf_counter()
        while accepted < reservations:
            vm = rng.choice(types[:3])
            start = now + rng.uniform(60, 30 * 86400)
            try:
                await scheduler.create(
                    "bench",
                    vm.name,
                    "leased",
                    rng.randint(1, 4),
                    start,
                    start + rng.uniform(3600, 7 * 86400),
                    "limited",
                    "targeted",
                    "Linux/UNIX",
                )
                accepted += 1
            except ComputeError:
                refused += 1
        create_ms = (time.perf_counter() - started) * 1000 / (accepted + refused)
        spec = {"image_id": "emi-00000001", "instance_type": "m1.small"}
        for _ in range(queued // 100):
            await scheduler.spot.request(Owner("bench"), spec, 100, "one-time", "terminate", None, None)
        small = compute.vm_type("m1.small")
        principal = Principal("bench")

        def measure(zone: str) -> list[float]:
            times = []
            for _ in range(decisions):
                request = RunRequest(image_id="emi-00000001", instance_type="m1.small", zone=zone)
                t0 = time.perf_counter()
                token = compute.launcher.admit(principal, request, small, zone)
                times.append((time.perf_counter() - t0) * 1000)
                compute.launcher.release_token(token)
            return times

        leased, plain = measure("leased"), measure("plain")
        queue = [
            r
            for r in sorted(store.spot.values(), key=lambda r: r.position)
            if r.state == "open" and r.spec.get("instance_type")
        ]
        from services.cloud_controller.leases.slottable import Request, Res

        need = Res(small.cores, small.memory_mb, small.disk_gb)
        requests = [Request(r.request_id, need, 1, None) for r in queue]
        table = scheduler.table("leased")
        t0 = time.perf_counter()
        plan = plan_queue(table, requests, time.time())
        plan_ms = (time.perf_counter() - t0) * 1000
        await store.close()
        await db.close()
    p50 = statistics.median(leased)
    return {
        "nodes": NODES,
        "reservations_accepted": accepted,
        "reservations_refused": refused,
        "create_reservation_ms_mean": round(create_ms, 3),
        "spot_queued": len(requests),
        "decision_ms_p50": round(p50, 3),
        "decision_ms_p99": round(percentile(leased, 0.99), 3),
        "baseline_no_leases_ms_p50": round(statistics.median(plain), 3),
        "baseline_no_leases_ms_p99": round(percentile(plain, 0.99), 3),
        "queue_plan_ms": round(plan_ms, 1),
        "queue_plan_started": len(plan.start),
        "target_p50_ms": TARGET_DECISION_P50_MS,
        "meets_target": p50 <= TARGET_DECISION_P50_MS,
    }


def drain_bench(count: int) -> dict:
    from tests.clc.compute_cloud import bundle_and_upload, wait_zone_ready
    from tests.clc.ec2_helpers import admin_creds, client
    from tests.harness import Cloud

    nc = {
        "MAX_CORES": count,
        "MAX_MEM": count * 128,
        "MAX_DISK": count * 2,
        "CPU_ALLOCATION_RATIO": 64,
        "RAM_ALLOCATION_RATIO": 64,
    }
    clc = {"KOALA_LOG_LEVEL": "WARNING", "KOALA_LEASE_TICK_SECONDS": 0.2, "KOALA_CC_POLL_SECONDS": 5}
    with tempfile.TemporaryDirectory(prefix="lease-drain-") as tmp:
        cloud = Cloud(Path(tmp) / "cloud", extra={"clc": clc, "nc": nc, "cc": {"KOALA_LOG_LEVEL": "WARNING"}})
        cloud.start()
        try:
            creds = admin_creds(cloud)
            ec2 = client(cloud, creds)
            location = bundle_and_upload(cloud, Path(tmp) / "bundle", "machine", "img.drain")
            image = ec2.register_image(ImageLocation=location, Name="drain")["ImageId"]
            wait_zone_ready(cloud, creds)
            od = ec2.run_instances(ImageId=image, MinCount=count, MaxCount=count)["Instances"]
            od_ids = [i["InstanceId"] for i in od]
            wait_for(lambda: _count(ec2, od_ids, "running") == count, 600, "on-demand running")
            spec = {"ImageId": image, "InstanceType": "m1.small"}
            rids = []
            for _ in range(count // 100):
                made = ec2.request_spot_instances(InstanceCount=100, LaunchSpecification=spec)
                rids += [r["SpotInstanceRequestId"] for r in made["SpotInstanceRequests"]]
            time.sleep(2.0)  # the queue is evaluated: nothing fits
            waiting = sum(1 for r in _spot(ec2) if r["State"] == "open")
            t0 = time.perf_counter()
            for first in range(0, count, 500):  # the EC2 front end takes at most 1000 parameters a request
                ec2.terminate_instances(InstanceIds=od_ids[first : first + 500])
            terminated = wait_for(lambda: _count(ec2, od_ids, "terminated") == count, 600, "terminated")
            terminated_s = terminated - t0
            drained = wait_for(
                lambda: sum(1 for r in _spot(ec2) if r["State"] == "active") == count, 600, "spot requests active"
            )
            drain_s = drained - t0
        finally:
            cloud.stop()
    return {
        "instances": count,
        "spot_waiting_before": waiting,
        "drain_s": round(drain_s, 2),
        "baseline_terminations_visible_s": round(terminated_s, 2),
        "target_s": TARGET_DRAIN_S,
        "meets_target": drain_s < TARGET_DRAIN_S,
    }


def _count(ec2, ids: list[str], state: str) -> int:
    found = 0
    paginator = ec2.get_paginator("describe_instances")
    for page in paginator.paginate(Filters=[{"Name": "instance-state-name", "Values": [state]}]):
        found += sum(1 for r in page["Reservations"] for i in r["Instances"] if i["InstanceId"] in set(ids))
    return found


def _spot(ec2) -> list[dict]:
    return ec2.describe_spot_instance_requests()["SpotInstanceRequests"]


def wait_for(condition, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)
    return time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=300)
    parser.add_argument("--reservations", type=int, default=1000)
    parser.add_argument("--queued", type=int, default=5000)
    parser.add_argument("--drain", type=int, default=1000)
    parser.add_argument("--skip-drain", action="store_true")
    args = parser.parse_args()
    result = {"decision": asyncio.run(decision_bench(args.decisions, args.reservations, args.queued))}
    if not args.skip_drain:
        result["drain"] = drain_bench(args.drain)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
