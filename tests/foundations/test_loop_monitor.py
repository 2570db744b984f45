"""common/loop_monitor.py: a stall of the event loop is logged with the CPU its thread had meanwhile, so a callback's
own work tells apart from a wait for a core; a shorter stall than the threshold is not logged."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import pytest

from common.loop_monitor import LoopMonitor

_HELD = re.compile(r"event loop held (\d+) ms \(its thread on a CPU for (\d+) ms\)")


def _spin(seconds: float) -> None:
    """Hold the loop on the CPU."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


async def test_stalls_logged_with_their_cpu(caplog: pytest.LogCaptureFixture) -> None:
    monitor = LoopMonitor(0.08)
    with caplog.at_level(logging.WARNING, logger="common.loop_monitor"):
        monitor.start()
        await asyncio.sleep(0.02)
        time.sleep(0.005)  # noqa: ASYNC251 (blocks on purpose) below the threshold: not logged
        await asyncio.sleep(0.02)
        time.sleep(0.15)  # noqa: ASYNC251 (blocks on purpose) held off the CPU, as by other processes
        await asyncio.sleep(0.02)
        _spin(0.15)  # held by the loop's own work
        await asyncio.sleep(0.02)
        await monitor.stop()
    stalls = [tuple(int(v) for v in m.groups()) for r in caplog.records if (m := _HELD.search(r.getMessage()))]
    assert len(stalls) == 2, stalls
    (off_held, off_cpu), (busy_held, busy_cpu) = stalls
    assert off_held >= 145 and off_cpu < off_held / 2
    assert busy_held >= 145 and busy_cpu >= 140
