"""Where a benchmark's CPU goes: CPU seconds per process group (a group is the trees under some root pids) and of
the whole machine, per named phase, read from /proc. For a bench that asks whether a figure is bound by one
process (a front end that another copy of would relieve) or by the machine's cores (shared by the client, the
storage daemons, the database and, on a shared machine, everyone else).

A tree's CPU is the sum over its live processes of their own and their reaped children's user+system time, so a
process that ends inside a phase (a wrk run, a database backend) is still counted, once.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, own + reaped children's CPU seconds) of a live process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    # fields[0] is the state (stat's 3rd field): ppid is the 4th, utime..cstime the 14th..17th
    return int(fields[1]), sum(int(value) for value in fields[11:15]) / TICK


def _processes() -> dict[int, tuple[int, float]]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                found[int(entry)] = stat
    return found


def tree_seconds(roots: list[int], processes: dict[int, tuple[int, float]]) -> float:
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in processes.items():
        children.setdefault(parent, []).append(pid)
    total, pending, seen = 0.0, [pid for pid in roots if pid in processes], set()
    while pending:
        pid = pending.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += processes[pid][1]
        pending.extend(children.get(pid, ()))
    return total


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent not idle (user, nice, system, irq, softirq, steal)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq + steal) / TICK


class CpuMeter:
    """`groups`: name -> root pids (their whole trees). The group "client" is this process's own time plus its
    reaped children's (wrk runs), so leave the bench's long-lived children (the servers) to other groups and
    start and stop them outside the phases."""

    def __init__(self, groups: dict[str, list[int]]):
        self.groups = groups
        self.phases: dict[str, dict[str, float]] = {}

    def _snapshot(self) -> dict[str, float]:
        processes = _processes()
        usage = {name: tree_seconds(roots, processes) for name, roots in self.groups.items()}
        own = os.times()
        usage["client"] = own.user + own.system + own.children_user + own.children_system
        usage["machine"] = machine_busy_seconds()
        usage["wall"] = time.perf_counter()
        return usage

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add what the code inside uses to phase `name` (phases of one name add up over rounds)."""
        before = self._snapshot()
        try:
            yield
        finally:
            after = self._snapshot()
            totals = self.phases.setdefault(name, {})
            for key, value in after.items():
                totals[key] = totals.get(key, 0.0) + value - before[key]

    def report(self) -> dict[str, dict[str, Any]]:
        """Per phase: wall seconds, CPU seconds per group, cores each used on average, and the machine's."""
        cores = os.cpu_count() or 1
        out: dict[str, dict[str, Any]] = {}
        for name, totals in self.phases.items():
            wall = totals["wall"] or 1e-9
            groups = {key: value for key, value in totals.items() if key not in ("wall", "machine")}
            ours = sum(groups.values())
            out[name] = {
                "wall_s": round(wall, 2),
                "cpu_s": {key: round(value, 2) for key, value in groups.items()},
                "cores_used": {key: round(value / wall, 2) for key, value in groups.items()},
                "ours_cores": round(ours / wall, 2),
                "machine_busy_cores": round(totals["machine"] / wall, 2),
                "others_cores": round((totals["machine"] - ours) / wall, 2),
                "machine_cores": cores,
            }
        return out
