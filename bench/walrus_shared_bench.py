"""Several Walrus front ends on one object store (metadata in PostgreSQL, data in Ceph), in one run, as JSON.

One single-node Ceph cluster (cli/ceph_local.py, BlueStore on a sparse file) and one PostgreSQL server (Debian's
binaries, durable settings: fsync and synchronous commit on), both in the bench's temporary directory. Then, one
after the other (never two set-ups at once on the 2 cores):
- one Walrus on the embedded backend and local files (the default: the baseline of the 4 KiB GET figure);
- one Walrus front end on the shared store (KOALA_WALRUS_DATABASE_URL, KOALA_WALRUS_STORAGE=rados);
- two front ends on that same store at once, the clients split between them: the aggregate.

Figures (bench/walrus_ceph_bench.py's `measure`): 1 MiB PUT and GET MiB/s (16 in flight, a Python client),
64 KiB GET requests/s, 4 KiB GET requests/s (wrk on one front end); and 1 MiB GET MiB/s with wrk (one per front
end, 16 connections in all), whose client costs far less CPU on this 2-core machine. Each is the best of a few
rounds.

Where the CPU goes (bench/cpu_meter.py), for each shared set-up and each 1 MiB phase, summed over the rounds: CPU
seconds of the client (this process and its wrk runs), each front end, the OSD, the monitor and manager, and
PostgreSQL, and the cores each used on average beside the whole machine's busy cores (others' work included on a
shared machine). Every MiB costs CPU in every process (the front end's share f of the total, the rest the OSD's,
the client's, PostgreSQL's): N cores serve at most N / (CPU per MiB), and one front end (one core for its Python)
at most 1 / (its CPU per MiB), so two front ends can beat one by at most N x f (`two_vs_one_ceiling`), and only
when one front end is held to a core while the others are idle. On 2 cores with f near 0.5 that is about 1x; a
cheaper front end lowers f and so the ceiling: the 1.6x target needs f >= 0.8 here, or more cores.

Targets (issue 23): two front ends' aggregate 1 MiB PUT and GET at least 1.6x one front end on the same Ceph; a
shared front end's 4 KiB GET at least 0.5x the embedded backend's on one front end.

Usage: .venv/bin/python bench/walrus_shared_bench.py [--quick] [--shared-only]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cpu_meter import CpuMeter
from bench.walrus_ceph_bench import WalrusFront, measure
from cli.ceph_local import CephCluster
from tests.ceph import WALRUS_POOL, walrus_rados_settings
from tests.harness import die_with_parent
from tests.postgres import PostgresServer

MiB = 1 << 20


def wrk_aggregate(urls: list[str], seconds: int) -> float:
    """Requests per second of one wrk per URL, all at once (16 connections in all): a client in C, so that the
    Python client's own CPU does not cap what the front ends serve."""
    if shutil.which("wrk") is None:
        return 0.0
    connections = max(2, 16 // len(urls))
    runs = [
        subprocess.Popen(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url], stdout=subprocess.PIPE, text=True)
        for url in urls
    ]
    total = 0.0
    for run in runs:
        out, _ = run.communicate(timeout=seconds + 60)
        if re.search(r"Non-2xx or 3xx responses: (\d+)", out):
            raise RuntimeError(f"wrk saw errors: {out}")
        match = re.search(r"Requests/sec:\s+([\d.]+)", out)
        total += float(match.group(1)) if match else 0.0
    return total


def wrk_1mib_get(fronts: list[WalrusFront], seconds: int, rounds: int, meter: CpuMeter) -> float:
    """MiB/s of 1 MiB GETs of one object through every front end at once (wrk), best of `rounds`."""
    body = os.urandom(MiB)
    fronts[0].s3.put_object(Bucket="bench", Key="one-mib", Body=body)
    urls = [front.presign("get_object", "one-mib") for front in fronts]
    rates = []
    for _ in range(rounds):
        with meter.phase("get_1MiB_wrk"):
            rates.append(wrk_aggregate(urls, seconds))
    return round(max(rates), 1)


def shared_meter(fronts: list[WalrusFront], cluster: CephCluster, postgres: PostgresServer) -> CpuMeter:
    """CPU accounting of the processes serving the shared store (the client is the meter's own group)."""
    daemons = {Path(str(p.args[0])).name: p.pid for p in cluster.processes}
    database = postgres.server.running_pid() if postgres.server else None
    groups = {f"walrus_{i}": [front.cloud.processes["walrus"].pid] for i, front in enumerate(fronts)}
    groups["ceph_osd"] = [daemons["ceph-osd"]]
    groups["ceph_mon_mgr"] = [daemons["ceph-mon"], daemons["ceph-mgr"]]
    groups["postgresql"] = [database] if database else []
    return CpuMeter(groups)


def scaling_ceiling(figures: dict[str, Any]) -> float:
    """The most two front ends can serve over one on this machine's cores, from one front end's share of the CPU
    a phase took (see the module's docstring)."""
    total = sum(figures["cpu_s"].values())
    share = figures["cpu_s"].get("walrus_0", 0.0) / total if total else 0.0
    return round(min(2.0, figures["machine_cores"] * share), 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and objects")
    parser.add_argument("--shared-only", action="store_true", help="leave out the embedded baseline (4 KiB GET)")
    args = parser.parse_args()
    rounds, count_1m, seconds = (2, 200, 3) if args.quick else (3, 400, 5)
    work = Path(tempfile.mkdtemp(prefix="walrus-shared-bench-"))
    started = time.perf_counter()
    cluster = CephCluster.create(work / "ceph", preexec=die_with_parent)
    postgres = PostgresServer().start()
    results: dict[str, object] = {"setup_seconds": round(time.perf_counter() - started, 1)}
    try:
        cluster.create_pool(WALRUS_POOL, "rados", pgs=32)
        embedded: dict[str, float] = {}
        if not args.shared_only:
            front = WalrusFront(work, "embedded", {})
            try:
                embedded = measure([front], rounds, count_1m, seconds)
            finally:
                front.stop()
        shared = {
            **walrus_rados_settings(cluster, "bench-shared"),
            "KOALA_WALRUS_DATABASE_URL": postgres.create_database("walrus"),
        }
        front = WalrusFront(work, "shared-one", shared)
        try:
            meter = shared_meter([front], cluster, postgres)
            one = measure([front], rounds, count_1m, seconds, meter)
            one["get_1MiB_wrk_MiB_per_s"] = wrk_1mib_get([front], seconds, rounds, meter)
            cpu_one = meter.report()
        finally:
            front.stop()
        fronts = [WalrusFront(work, f"shared-two-{i}", shared) for i in range(2)]
        try:
            meter = shared_meter(fronts, cluster, postgres)
            two = measure(fronts, rounds, count_1m, seconds, meter)
            two["get_1MiB_wrk_MiB_per_s"] = wrk_1mib_get(fronts, seconds, rounds, meter)
            cpu_two = meter.report()
        finally:
            for front in fronts:
                front.stop()
    finally:
        postgres.stop()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 3) if a and b else None

    results["embedded_one_front_end"] = embedded
    results["shared_one_front_end"] = one
    results["shared_two_front_ends"] = two
    results["ratios"] = {
        "two_vs_one_front_end_put_1MiB": ratio(two["put_1MiB_MiB_per_s"], one["put_1MiB_MiB_per_s"]),
        "two_vs_one_front_end_get_1MiB": ratio(two["get_1MiB_MiB_per_s"], one["get_1MiB_MiB_per_s"]),
        "two_vs_one_front_end_get_1MiB_wrk": ratio(two["get_1MiB_wrk_MiB_per_s"], one["get_1MiB_wrk_MiB_per_s"]),
        "shared_vs_embedded_get_4KiB": ratio(
            one["get_4KiB_requests_per_s"], embedded.get("get_4KiB_requests_per_s", 0)
        ),
        "shared_vs_embedded_get_64KiB": ratio(
            one["get_64KiB_requests_per_s"], embedded.get("get_64KiB_requests_per_s", 0)
        ),
    }
    results["cpu"] = {
        "shared_one_front_end": cpu_one,
        "shared_two_front_ends": cpu_two,
        "two_vs_one_ceiling": {phase: scaling_ceiling(figures) for phase, figures in cpu_one.items()},
    }
    results["targets"] = {
        "aggregate_1MiB": "two front ends >= 1.6 x one front end on the same Ceph",
        "get_4KiB": "shared front end >= 0.5 x embedded backend (one front end)",
    }
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
