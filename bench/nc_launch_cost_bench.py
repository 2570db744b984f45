"""The NC's CPU per launched instance (libvirt's test driver, so every millisecond is the NC's own): one real NC
process per tree, `--instances` RunInstance calls from 8 concurrent callers, CPU of the NC process and of the
children it ran (qemu-img, mkswap...) from the first call until every instance was pushed Extant to the CC, then
the same for the terminations. This tree against a baseline commit in the same run (a temporary `git worktree`;
each tree runs in its own process with its own code, its NC spawned from that tree).

    .venv/bin/python bench/nc_launch_cost_bench.py [--instances 400] [--baseline cb9775d]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.worktrees import baseline_tree, run_json  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process and of its waited-for children (/proc/PID/stat fields 14-17)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / TICK


def measure(count: int) -> dict:
    from common.messages.cc_nc import VmType
    from tests.nc.conftest import close_env, make_env

    vm = VmType(name="m1.small", cores=1, memory_mb=64, disk_gb=2)
    tmp = Path(tempfile.mkdtemp(prefix="nc-cost-"))
    settings = {"KOALA_NC_MONITOR_SECONDS": 5, "SWAP_SIZE": 64, "CONCURRENT_DISK_OPS": 4, "MAX_CORES": 100000}
    env = make_env(tmp, settings, domains=[])
    try:
        manifest = env.image("cost", size=8 << 20)
        pid = env.cloud.processes["nc"].pid
        # Warm-up, not counted: the image download and the first launch's one-off work.
        env.run("i-0c050000", image="emi-00000c05", manifest=manifest, vm_type=vm)
        env.wait_state("i-0c050000", "Extant", 60)
        env.terminate("i-0c050000")
        ids = [f"i-0c05{n + 1:04x}" for n in range(count)]
        errors: list[str] = []

        def launch(chunk: list[str]) -> None:
            for instance_id in chunk:
                try:
                    env.run(instance_id, image="emi-00000c05", manifest=manifest, vm_type=vm)
                except Exception as err:
                    errors.append(f"{instance_id}: {err}")

        def wait_pushed(state: str) -> None:
            wanted, deadline = set(ids), time.monotonic() + 600
            while time.monotonic() < deadline:
                seen = {i for _, i, s in list(env.recorder.arrivals) if s == state}
                if wanted <= seen:
                    return
                time.sleep(0.05)
            raise SystemExit(f"not all {state} after 600 s")

        cpu0, began = cpu_seconds(pid), time.monotonic()
        threads = [threading.Thread(target=launch, args=(ids[i::8],)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise SystemExit(f"{len(errors)} launches failed, e.g. {errors[0]}")
        wait_pushed("Extant")
        launch_cpu, launch_wall = cpu_seconds(pid) - cpu0, time.monotonic() - began
        cpu1 = cpu_seconds(pid)
        for instance_id in ids:
            env.terminate(instance_id)
        wait_pushed("Teardown")
        end_cpu = cpu_seconds(pid) - cpu1
        return {
            "instances": count,
            "launch_wall_s": round(launch_wall, 2),
            "launch_cpu_ms_per_instance": round(launch_cpu / count * 1000, 2),
            "terminate_cpu_ms_per_instance": round(end_cpu / count * 1000, 2),
        }
    finally:
        close_env(env)


def run_tree(tree: Path, count: int) -> dict:
    return run_json([sys.executable, __file__, "--child", str(tree), "--instances", str(count)], tree)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=400)
    parser.add_argument("--baseline", default="cb9775d")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, args.child)
        print(json.dumps(measure(args.instances)))
        return
    with baseline_tree(args.baseline, "nc-cost-baseline-") as base:
        baseline = run_tree(base, args.instances)
        ours = run_tree(ROOT, args.instances)
    key = "launch_cpu_ms_per_instance"
    print(
        json.dumps(
            {
                "benchmark": "nc_launch_cost",
                "baseline": {"commit": args.baseline, **baseline},
                "this_tree": ours,
                "launch_cpu_ratio": round(baseline[key] / max(ours[key], 1e-9), 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
