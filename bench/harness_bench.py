"""What one test cloud costs the suite: start (until every /healthz answers) and stop of the four services the test
harness runs (tests/harness.py Cloud: CLC, Walrus, CC, NC on libvirt's test driver), wall time and the CPU the
service processes used, over alternating rounds of two ways of doing it:

- `before`: as the harness did before session 9: each CLC hashes a fresh admin web password at its first start
  (scrypt, N=2^17), every service compiles the project's modules from source (no .pyc where PYTHONDONTWRITEBYTECODE
  is set, as in this machine's sessions), and the services are stopped one after the other;
- `after`: the harness now: one admin login hashed once per session, .pyc files written at session start
  (tests/conftest.py), and every service asked to stop at once.

The suite starts about a hundred such clouds (and restarts many services), so a second per cloud is minutes on two
cores.

    .venv/bin/python bench/harness_bench.py [--rounds 4]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import Cloud  # noqa: E402


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_cloud(work: Path, sources: Path, before: bool) -> dict[str, float]:
    # `before`: the services import the project from a copy without .pyc files (site-packages keep theirs, as pip
    # wrote them); no .pyc is written either way.
    saved = {key: os.environ.get(key) for key in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    if before:
        os.environ["PYTHONPATH"] = str(sources)
    try:
        cloud = Cloud(work / "cloud", fresh_admin_login=before)
        cpu, started = children_cpu(), time.monotonic()
        cloud.start()
        start = time.monotonic() - started
        time.sleep(1.0)  # settled: peers found, first polls done
        stopping = time.monotonic()
        if before:
            for role in reversed(list(cloud.processes)):
                cloud.stop(role)
        else:
            cloud.stop()
        stop = time.monotonic() - stopping
        return {"start_s": start, "stop_s": stop, "cpu_s": children_cpu() - cpu}
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    for package in ("cli", "common", "services"):
        compileall.compile_dir(ROOT / package, quiet=1)
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="koala-harness-bench-") as tmp:
        sources = Path(tmp) / "sources"
        for package in ("cli", "common", "services"):
            shutil.copytree(ROOT / package, sources / package, ignore=shutil.ignore_patterns("__pycache__"))
        one_cloud(Path(tmp) / "warm-up", sources, before=False)  # the first cloud of a process costs more: not counted
        for index in range(args.rounds):
            for way in ("before", "after") if index % 2 == 0 else ("after", "before"):
                runs[way].append(one_cloud(Path(tmp) / f"{way}{index}", sources, before=way == "before"))
    result: dict[str, object] = {"rounds": args.rounds}
    for way, figures in runs.items():
        result[way] = {key: round(statistics.mean(f[key] for f in figures), 3) for key in figures[0]}
    before, after = result["before"], result["after"]
    assert isinstance(before, dict) and isinstance(after, dict)
    result["saved_per_cloud"] = {key: round(before[key] - after[key], 3) for key in before}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
