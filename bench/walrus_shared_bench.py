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

Targets (issue 23): two front ends' aggregate 1 MiB PUT and GET at least 1.6x one front end on the same Ceph; a
shared front end's 4 KiB GET at least 0.5x the embedded backend's on one front end.

Usage: .venv/bin/python bench/walrus_shared_bench.py [--quick]
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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


def wrk_1mib_get(fronts: list[WalrusFront], seconds: int, rounds: int) -> float:
    """MiB/s of 1 MiB GETs of one object through every front end at once (wrk), best of `rounds`."""
    body = os.urandom(MiB)
    fronts[0].s3.put_object(Bucket="bench", Key="one-mib", Body=body)
    urls = [front.presign("get_object", "one-mib") for front in fronts]
    return round(max(wrk_aggregate(urls, seconds) for _ in range(rounds)), 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and objects")
    args = parser.parse_args()
    rounds, count_1m, seconds = (2, 200, 3) if args.quick else (3, 400, 5)
    work = Path(tempfile.mkdtemp(prefix="walrus-shared-bench-"))
    started = time.perf_counter()
    cluster = CephCluster.create(work / "ceph", preexec=die_with_parent)
    postgres = PostgresServer().start()
    results: dict[str, object] = {"setup_seconds": round(time.perf_counter() - started, 1)}
    try:
        cluster.create_pool(WALRUS_POOL, "rados", pgs=32)
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
            one = measure([front], rounds, count_1m, seconds)
            one["get_1MiB_wrk_MiB_per_s"] = wrk_1mib_get([front], seconds, rounds)
        finally:
            front.stop()
        fronts = [WalrusFront(work, f"shared-two-{i}", shared) for i in range(2)]
        try:
            two = measure(fronts, rounds, count_1m, seconds)
            two["get_1MiB_wrk_MiB_per_s"] = wrk_1mib_get(fronts, seconds, rounds)
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
        "shared_vs_embedded_get_4KiB": ratio(one["get_4KiB_requests_per_s"], embedded["get_4KiB_requests_per_s"]),
        "shared_vs_embedded_get_64KiB": ratio(one["get_64KiB_requests_per_s"], embedded["get_64KiB_requests_per_s"]),
    }
    results["targets"] = {
        "aggregate_1MiB": "two front ends >= 1.6 x one front end on the same Ceph",
        "get_4KiB": "shared front end >= 0.5 x embedded backend (one front end)",
    }
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
