"""Failed sign-ins: a login name is locked after FAILURES failures within WINDOW seconds, and a client address
after ADDRESS_FAILURES (guessing across many names); the lock lasts LOCKOUT seconds. While locked, even the right
password is refused, so guessing cannot continue. Success clears the name's count (not the address's).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

FAILURES = 5
ADDRESS_FAILURES = 20
WINDOW = 15 * 60.0
LOCKOUT = 5 * 60.0
MAX_KEYS = 10000


@dataclass
class _Record:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0


class FailureLimiter:
    def __init__(
        self,
        failures: int = FAILURES,
        address_failures: int = ADDRESS_FAILURES,
        window: float = WINDOW,
        lockout: float = LOCKOUT,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.limits = {"login": failures, "addr": address_failures}
        self.window, self.lockout, self.clock = window, lockout, clock
        self._records: dict[tuple[str, str], _Record] = {}

    def locked_for(self, login: str, address: str) -> float:
        """Seconds left on the longer of the two locks (0 when sign-in may be tried)."""
        now = self.clock()
        left = 0.0
        for key in (("login", login.lower()), ("addr", address)):
            record = self._records.get(key)
            if record is not None and record.locked_until > now:
                left = max(left, record.locked_until - now)
        return left

    def failed(self, login: str, address: str) -> None:
        now = self.clock()
        if len(self._records) >= MAX_KEYS:
            self._prune(now)
        for key in (("login", login.lower()), ("addr", address)):
            record = self._records.setdefault(key, _Record())
            record.failures.append(now)
            while record.failures and record.failures[0] < now - self.window:
                record.failures.popleft()
            if len(record.failures) >= self.limits[key[0]]:
                record.locked_until = now + self.lockout
                record.failures.clear()

    def succeeded(self, login: str) -> None:
        self._records.pop(("login", login.lower()), None)

    def _prune(self, now: float) -> None:
        for key in [
            k
            for k, r in self._records.items()
            if r.locked_until <= now and (not r.failures or r.failures[-1] < now - self.window)
        ]:
            del self._records[key]
