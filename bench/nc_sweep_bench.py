"""The NC's idle monitoring cost: CPU per reconcile sweep over a node running `--domains` domains (libvirt's test
driver, so every microsecond is the NC's own), this tree against a baseline commit in the same run.

A sweep is what `InstanceManager.reconcile` does for an idle node apart from per-instance bookkeeping: list the
domains through the real `Hypervisor.domains()`, tell ours (`instances._ours`) and look for unknown ones
(`InstanceManager._find_unknown`). Each tree runs in its own process with its own code; the baseline is a
temporary `git worktree` of `--baseline` (default: the commit issue 24 started from).

    .venv/bin/python bench/nc_sweep_bench.py [--domains 2000] [--sweeps 10] [--baseline a1c6e8b]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.worktrees import baseline_tree, run_json  # noqa: E402


async def measure(domains: int, sweeps: int) -> dict:
    from services.node_controller.domain import DiskSpec, DomainSpec, render
    from services.node_controller.hypervisor import Hypervisor
    from services.node_controller.instances import InstanceManager, _ours

    hv = Hypervisor("test:///default", lambda *_: None)
    assert await hv.start()
    work = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    names = [f"i-{n:08x}" for n in range(domains)]
    for name in names:
        spec = DomainSpec(
            name=name,
            uuid=str(uuid.uuid4()),
            memory_mb=64,
            vcpus=1,
            disks=[DiskSpec(work / name / "root.img", "root")],
            console_log=work / name / "console.log",
            owner_id="000000000001",
            bridge="br0",
            mac="d0:0d:00:00:00:01",
        )
        await hv.create(render(spec, "test"))
    manager = SimpleNamespace(instances=dict.fromkeys(names), unknown_domains={})
    cpu: list[float] = []
    for _ in range(sweeps + 1):  # the first sweep reads every XML once: reported apart
        started = time.process_time()
        listed = {d.name: d for d in await hv.domains()}
        ours = [name for name, d in listed.items() if _ours(d)]
        InstanceManager._find_unknown(manager, listed)  # type: ignore[arg-type]
        cpu.append(time.process_time() - started)
        assert len(ours) == domains and not manager.unknown_domains
    await hv.close()
    idle = sorted(cpu[1:])[len(cpu[1:]) // 2]
    return {
        "first_sweep_cpu_s": round(cpu[0], 4),
        "idle_sweep_cpu_s_median": round(idle, 4),
        "idle_sweep_cpu_us_per_domain": round(idle / domains * 1e6, 2),
        # A sweep every 5 s: the share of one core the idle monitoring takes.
        "idle_core_share_at_5s": round(idle / 5.0, 4),
    }


def run_tree(tree: Path, domains: int, sweeps: int) -> dict:
    return run_json(
        [sys.executable, __file__, "--child", str(tree), "--domains", str(domains), "--sweeps", str(sweeps)], tree
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--domains", type=int, default=2000)
    parser.add_argument("--sweeps", type=int, default=10)
    parser.add_argument("--baseline", default="a1c6e8b")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, args.child)
        print(json.dumps(asyncio.run(measure(args.domains, args.sweeps))))
        return
    with baseline_tree(args.baseline, "sweep-baseline-") as base:
        baseline = run_tree(base, args.domains, args.sweeps)
        ours = run_tree(ROOT, args.domains, args.sweeps)
    print(
        json.dumps(
            {
                "domains": args.domains,
                "sweeps": args.sweeps,
                "baseline": {"commit": args.baseline, **baseline},
                "this_tree": ours,
                "idle_sweep_cpu_ratio": round(
                    baseline["idle_sweep_cpu_s_median"] / max(ours["idle_sweep_cpu_s_median"], 1e-9), 2
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
