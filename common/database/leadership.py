"""Leadership among processes sharing one PostgreSQL database: a session-level advisory lock.

One process holds the lock on a dedicated session; the others poll `pg_try_advisory_lock` and stand by. The
holder's session is also its database writer (`PostgresDatabase`), so its writes are fenced by the lock: when
the session ends (process killed, connection cut), PostgreSQL releases the lock and nothing more can commit
through it.

A killed process's session ends at once (the kernel closes its socket). A process cut off from the database
leaves a half-open session behind. The holder checks its session every HEARTBEAT_SECONDS and gives up (its
`on_lost`) when it has not reached the server for LEASE_SECONDS; the session settings below make the server
probe the silent client and drop the session, releasing the lock, a little later (~5 s), so the deposed
leader has stopped before another process can take over. A leader that is merely slow (a loaded machine) is not
dropped: the kernel answers the server's probes, and its next heartbeat gets a full second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import asyncpg

from common.database.postgres import Writer, connect

log = logging.getLogger("koala.leadership")
HEARTBEAT_SECONDS = 1.0
LEASE_SECONDS = 3.0  # a leader that has not reached the database for this long stops
POLL_SECONDS = 0.5  # how often a standby tries the lock
# The server drops a silent client after 2 s idle + 3 probes 1 s apart, or 5 s of unacknowledged data.
_SESSION = {
    "tcp_keepalives_idle": "2",
    "tcp_keepalives_interval": "1",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "5000",
    "application_name": "koala-leader",
}


class Leadership:
    def __init__(self, conn: asyncpg.Connection, key: int):
        self.conn, self.key = conn, key
        self.writer = Writer(conn)  # the session's writes (the databases opened with this leadership) ...
        self.lock = self.writer.lock  # ... and the heartbeat take turns on it
        self.last_contact = time.monotonic()
        self._watch: asyncio.Task[None] | None = None
        self._released = False

    @classmethod
    async def acquire(cls, url: str, key: int, on_standby: Callable[[], None] | None = None) -> Leadership:
        """Wait until this process holds the lock `key` (retrying lost connections); `on_standby` is called once
        if another process holds it."""
        told = False
        while True:
            try:
                conn = await asyncio.wait_for(connect(url, **_SESSION), LEASE_SECONDS)
            except (TimeoutError, OSError, asyncpg.PostgresError) as err:
                log.warning("database unreachable (%s); retrying", err)
                await asyncio.sleep(POLL_SECONDS)
                continue
            try:
                while True:
                    got = await asyncio.wait_for(conn.fetchval("SELECT pg_try_advisory_lock($1)", key), LEASE_SECONDS)
                    if got:
                        log.info("leadership acquired (lock %d)", key)
                        return cls(conn, key)
                    if not told and on_standby is not None:
                        on_standby()
                    told = True
                    await asyncio.sleep(POLL_SECONDS)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                log.warning("lost the database while standing by (%s); reconnecting", err)
                with contextlib.suppress(Exception):
                    conn.terminate()

    def watch(self, on_lost: Callable[[str], None]) -> None:
        """Check the session every HEARTBEAT_SECONDS; call `on_lost(reason)` once when leadership is gone."""

        def ended(_conn: object) -> None:
            if not self._released:
                on_lost("the leader's database session ended")

        self.conn.add_termination_listener(ended)
        self._watch = asyncio.create_task(self._heartbeat(on_lost), name="leadership heartbeat")

    async def _heartbeat(self, on_lost: Callable[[str], None]) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                async with asyncio.timeout(
                    max(HEARTBEAT_SECONDS, self.last_contact + LEASE_SECONDS - time.monotonic())
                ):
                    async with self.writer.session() as session:
                        held = await session.fetchval(
                            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid ="
                            " pg_backend_pid() AND objid = ($1::bigint & 4294967295)::oid AND granted)",
                            self.key,
                        )
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                if time.monotonic() - self.last_contact >= LEASE_SECONDS:
                    on_lost(
                        f"no contact with the database for {LEASE_SECONDS:.0f} s ({str(err) or type(err).__name__})"
                    )
                    return
                continue
            if not held:
                on_lost("the advisory lock is no longer held")
                return
            self.last_contact = time.monotonic()

    async def release(self) -> None:
        self._released = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.conn.close(), 2)
