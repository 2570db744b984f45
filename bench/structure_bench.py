"""The existing benchmarks' figures on this tree against a baseline commit, in the same run (issue 16: every
benchmark within 5 % of its figure before the structure work).

Each benchmark is the tree's own script with the same small arguments, run once per round in each tree (the
baseline in a temporary `git worktree`, run with its own code), alternating baseline and this tree. Every numeric
figure both trees print is compared; whether lower or higher is better is read from its name (`_ms`, `_s`, `cpu`,
`p50` ... lower; `per_s`, `rps`, `mib_s` ... higher); figures named otherwise (and goals, `target_*`) are left out.
With several rounds (who goes first alternating) each tree's best value counts: the shared machine only ever makes
a run slower. `change_pct` is positive when this tree is worse. The floors the benchmarks measure themselves in
the same run (`/healthz`, sendfile, dd...) show how much the machine itself moved between the two trees' runs.

    flock /work/wt/heavy.lock .venv/bin/python bench/structure_bench.py [--baseline cb9775d] [--rounds 1]
        [--only cc,rpc,clc,compute,lease,walrus]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.worktrees import baseline_tree, run_json  # noqa: E402

# name -> (script, arguments): the cheap benchmarks, at sizes that take a minute or less per tree.
BENCHMARKS: dict[str, tuple[str, list[str]]] = {
    "cc": ("cc_bench.py", ["--skip-fanout"]),
    "rpc": ("rpc_bench.py", ["--seconds", "2"]),
    "clc": ("clc_bench.py", ["--seconds", "3", "--instances", "2000"]),
    "compute": ("clc_compute_bench.py", ["--instances", "2000", "--requests", "10", "--launches", "5"]),
    "lease": ("lease_bench.py", ["--skip-drain", "--decisions", "200"]),
    "walrus": ("walrus_bench.py", ["--quick"]),
}
HIGHER = re.compile(r"per_s|per_sec|rps|req_s|mib_s|ops_s|throughput")
LOWER = {"ms", "us", "s", "seconds", "latency", "cpu", "rss", "mb", "p50", "p95", "p99", "median", "worst", "mean"}
WORSE_LIMIT = 5.0  # percent


def flatten(value: Any, prefix: str = "") -> dict[str, float]:
    """Every numeric leaf of a JSON document, by its dotted path."""
    if isinstance(value, bool):
        return {}
    if isinstance(value, int | float):
        return {prefix: float(value)}
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {}
    out: dict[str, float] = {}
    for key, child in items:
        out.update(flatten(child, f"{prefix}.{key}" if prefix else str(key)))
    return out


def direction(key: str) -> str:
    leaf = key.rsplit(".", 1)[-1].lower()
    if leaf.startswith("target") or leaf == "seconds":
        return ""  # a benchmark's goal or its own run length, not a figure
    if "ratio" in leaf or leaf.endswith("_x") or "speedup" in leaf:
        return ""  # a comparison the benchmark made itself
    if HIGHER.search(leaf):
        return "higher"
    if LOWER & set(leaf.split("_")):
        return "lower"
    return ""


def compare(baseline: list[dict[str, float]], ours: list[dict[str, float]]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for key in sorted(set(baseline[0]) & set(ours[0])):
        better = direction(key)
        if not better:
            continue
        pick = max if better == "higher" else min
        base = pick(run[key] for run in baseline if key in run)
        mine = pick(run[key] for run in ours if key in run)
        if base == 0:
            continue
        worse = (base - mine) / base if better == "higher" else (mine - base) / base
        figures[key] = {"baseline": base, "this_tree": mine, "better": better, "change_pct": round(100 * worse, 1)}
    return figures


def run_bench(tree: Path, script: str, arguments: list[str]) -> tuple[dict[str, float], float]:
    started = time.monotonic()
    result = run_json([sys.executable, str(tree / "bench" / script), *arguments], tree, timeout=900)
    return flatten(result), time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="cb9775d")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated: " + ",".join(BENCHMARKS))
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmarks: {', '.join(unknown)}")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    report: dict[str, Any] = {"baseline": args.baseline, "this_tree": head.stdout.strip(), "rounds": args.rounds}
    results: dict[str, Any] = {}
    with baseline_tree(args.baseline, "structure-baseline-") as base:
        for name in names:
            script, arguments = BENCHMARKS[name]
            runs: dict[str, list[dict[str, float]]] = {"baseline": [], "this_tree": []}
            seconds = 0.0
            try:
                for round_ in range(args.rounds):
                    sides = [("baseline", base), ("this_tree", ROOT)]
                    for side, tree in sides if round_ % 2 == 0 else sides[::-1]:  # who goes first alternates
                        figures, took = run_bench(tree, script, arguments)
                        runs[side].append(figures)
                        seconds += took
            except (SystemExit, subprocess.TimeoutExpired) as err:  # one benchmark failing does not lose the others
                results[name] = {"command": f"bench/{script} {' '.join(arguments)}", "error": str(err)[-1500:]}
                print(f"{name}: failed", file=sys.stderr)
                continue
            figures = compare(runs["baseline"], runs["this_tree"])
            worse = {k: f["change_pct"] for k, f in figures.items() if f["change_pct"] > WORSE_LIMIT}
            results[name] = {
                "command": f"bench/{script} {' '.join(arguments)}",
                "seconds": round(seconds, 1),
                "figures": figures,
                "worse_than_5pct": worse,
            }
            print(f"{name}: {len(figures)} figures, {len(worse)} worse by more than 5 %", file=sys.stderr)
    report["benchmarks"] = results
    report["all_within_5pct"] = not any(r.get("worse_than_5pct", True) for r in results.values())
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
