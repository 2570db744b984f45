"""The one retry delay of Koala's control loops: exponential backoff, reset by a success.

Every loop that talks to a peer or to libvirt (pushes up the hierarchy, peer monitoring, libvirt reconnects) waits
through a `Backoff`, so the constants live at the call site and the behaviour in one place."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Each failure waits `factor` times longer than the last, up to `maximum`; `reset()` after a success."""

    initial: float = 0.2
    maximum: float = 10.0
    factor: float = 2.0
    jitter: bool = False  # spread each wait over 0.5x..1.5x, so many clients retrying do not move in step
    delay: float = field(init=False)

    def __post_init__(self) -> None:
        self.delay = self.initial

    def next_delay(self) -> float:
        """The delay to wait now; the following one grows."""
        delay = self.delay * (0.5 + random.random()) if self.jitter else self.delay
        self.delay = min(self.delay * self.factor, self.maximum)
        return delay

    async def wait(self) -> None:
        await asyncio.sleep(self.next_delay())

    def reset(self) -> None:
        self.delay = self.initial
