"""Admin sessions, held in memory (a CLC restart signs everyone out, which is the safe direction).

The cookie carries 256 random bits; the store keys sessions by the SHA-256 of that value, so even a memory dump
of the store does not give a usable cookie. Sessions end after IDLE seconds without a request or at the latest
LIFETIME seconds after sign-in; each has its own CSRF token for its forms.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

IDLE = 30 * 60.0
LIFETIME = 12 * 3600.0
MAX_SESSIONS = 1000


def _key(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


@dataclass
class Session:
    login: str
    csrf: str
    created: float
    seen: float
    remote: str = ""
    flashes: list[tuple[str, str]] = field(default_factory=list)  # (kind, text), shown once

    def flash(self, kind: str, text: str) -> None:
        self.flashes = [*self.flashes[-9:], (kind, text)]

    def take_flashes(self) -> list[tuple[str, str]]:
        flashes, self.flashes = self.flashes, []
        return flashes


class Sessions:
    def __init__(self, idle: float = IDLE, lifetime: float = LIFETIME, clock: Callable[[], float] = time.monotonic):
        self.idle, self.lifetime, self.clock = idle, lifetime, clock
        self._sessions: dict[str, Session] = {}

    def create(self, login: str, remote: str = "") -> tuple[str, Session]:
        """A new session; returns the cookie value (given to the browser only) and the session."""
        self.expire()
        if len(self._sessions) >= MAX_SESSIONS:  # drop the oldest rather than grow without bound
            oldest = min(self._sessions, key=lambda k: self._sessions[k].seen)
            del self._sessions[oldest]
        cookie = secrets.token_urlsafe(32)
        now = self.clock()
        session = Session(login=login, csrf=secrets.token_urlsafe(32), created=now, seen=now, remote=remote)
        self._sessions[_key(cookie)] = session
        return cookie, session

    def get(self, cookie: str | None) -> Session | None:
        if not cookie or len(cookie) > 128:
            return None
        key = _key(cookie)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self.clock()
        if now - session.seen > self.idle or now - session.created > self.lifetime:
            del self._sessions[key]
            return None
        session.seen = now
        return session

    def drop(self, cookie: str | None) -> None:
        if cookie:
            self._sessions.pop(_key(cookie), None)

    def drop_login(self, login: str) -> None:
        """Sign a login out everywhere (after its password changed)."""
        for key in [k for k, s in self._sessions.items() if s.login == login]:
            del self._sessions[key]

    def expire(self) -> None:
        now = self.clock()
        for key in [
            k for k, s in self._sessions.items() if now - s.seen > self.idle or now - s.created > self.lifetime
        ]:
            del self._sessions[key]

    def __len__(self) -> int:
        return len(self._sessions)
