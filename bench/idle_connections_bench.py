"""Answers under 3,000 idle connections, on every service (issue 15: "/healthz and a signed EC2 call still answer
within 2 s"), against the same calls on the same cloud with no idle connection, in one run.

One cloud (CLC, Walrus, CC, NC as processes, with the connection limits of tests/hardening/test_connections.py).
For each service: 30 rounds of `/healthz` and of a signed call (EC2 DescribeAvailabilityZones on the CLC, S3
ListBuckets on Walrus, signed internal DescribeService on the CC and NC), first with no other connection, then
with 3,000 idle connections held open from 30 loopback addresses; then how long the server takes to close the idle
ones (its idle timeout is 8 s here). JSON: p50/p90/max per call, the loaded/idle ratio, and the target.

    .venv/bin/python bench/idle_connections_bench.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.hardening.test_connections import (
    IDLE,
    IDLE_CONNECTIONS,
    PER_PEER,
    ROLES,
    SETTINGS,
    _address,
    _healthz,
    _open,
    _signed_call,
)
from tests.harness import Cloud

TARGET_SECONDS = 2.0


def _times(call: Callable[[], None], rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def _measure(cloud: Cloud, role: str, rounds: int) -> dict:
    calls = {"healthz": lambda: _healthz(cloud, role), "signed": lambda: _signed_call(cloud, role)}
    quiet = {name: _times(call, rounds) for name, call in calls.items()}

    async def loaded() -> tuple[dict[str, list[float]], float, int]:
        sources = [f"127.0.1.{n}" for n in range(1, IDLE_CONNECTIONS // PER_PEER + 1)]
        idle = await _open(_address(cloud, role), sources, PER_PEER)
        opened = time.perf_counter()
        try:
            busy = {name: await asyncio.to_thread(_times, call, rounds) for name, call in calls.items()}
            ends = await asyncio.gather(*(asyncio.wait_for(r.read(), IDLE + 30) for r, _ in idle))
            return busy, time.perf_counter() - opened, sum(end == b"" for end in ends)
        finally:
            for _, writer in idle:
                writer.close()

    busy, closed_after, closed = asyncio.run(loaded())
    report: dict = {"idle_connections": IDLE_CONNECTIONS, "closed_by_server": closed}
    for name in calls:
        report[name] = {
            "no_idle": _summary(quiet[name]),
            "with_idle": _summary(busy[name]),
            "ratio_p50": round(statistics.median(busy[name]) / statistics.median(quiet[name]), 2),
            "within_target": max(busy[name]) < TARGET_SECONDS,
        }
    report["all_closed_after_s"] = round(closed_after, 1)
    report["idle_timeout_s"] = IDLE
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(prefix="idle-bench-") as tmp:
        cloud = Cloud(Path(tmp) / "cloud", extra={role: SETTINGS for role in ROLES})
        try:
            cloud.start()
            report = {"target_max_s": TARGET_SECONDS, "rounds": args.rounds}
            report.update({role: _measure(cloud, role, args.rounds) for role in ROLES})
            print(json.dumps(report, indent=2))
        finally:
            cloud.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
