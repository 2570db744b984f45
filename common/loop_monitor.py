"""How long a service's event loop was held: a timer due every few ms that logs each time it ran late by more than
a threshold (a callback held the loop, or the process waited for a CPU), and full garbage collections as long.

Off by default (KOALA_LOOP_STALL_MS=0); the scale benchmark turns it on in the CLC to show what a request arriving
during a big launch may wait for, and whether the loop's own work or the machine's other processes held it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 0.005  # how often the timer is due: a stall shorter than this may pass unseen


class LoopMonitor:
    def __init__(self, threshold: float):
        self.threshold = threshold
        self.collections: list[tuple[int, float]] = []  # (generation, seconds) of long collections, not yet logged
        self._gc_started = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-monitor")

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        # Runs inside the collector: only note the time here, the logging is the timer task's.
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif info["generation"] == 2:
            took = time.perf_counter() - self._gc_started
            if took >= self.threshold:
                self.collections.append((2, took))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + SAMPLE_SECONDS
            cpu = time.thread_time()
            await asyncio.sleep(SAMPLE_SECONDS)
            late = loop.time() - due
            if late >= self.threshold:
                # The loop thread's CPU time over the stall tells its own work (close to `late`) from a wait for
                # a CPU the machine's other processes had (far below it).
                used = time.thread_time() - cpu
                log.warning("event loop held %.0f ms (its thread on a CPU for %.0f ms)", late * 1000, used * 1000)
            while self.collections:
                generation, took = self.collections.pop(0)
                log.warning("garbage collection of generation %d took %.0f ms", generation, took * 1000)
