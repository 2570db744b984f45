"""The one way to keep track of a detached process by its pid file, and to stop it.

A pid file alone is not trusted: the pid it names may have ended and been reused. `PidFile.running` believes it
only while that process's command line still carries the daemon's own marker argument (its configuration file),
so a stale file never leads to signalling someone else's process. Used by the all-in-one (`koala up/down`, one
file per service) and by the CC's DHCP server (dnsmasq, which writes its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path


class PidFile:
    def __init__(self, path: Path, marker: str):
        self.path, self.marker = path, marker.encode()

    def running(self) -> int | None:
        """The pid in the file, if that process runs with `marker` as one of its arguments."""
        try:
            pid = int(self.path.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        return pid if self.marker in cmdline else None

    def write(self, pid: int) -> None:
        self.path.write_text(f"{pid}\n")

    def stop(self, timeout: float, poll: float = 0.05) -> bool:
        """SIGTERM the daemon, SIGKILL it if it still runs after `timeout` s, and remove the pid file. False when
        it was not running. Blocks: from a coroutine use `stop_soon`."""
        pid = self.running()
        if pid is None:
            self.path.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive(pid):
            time.sleep(poll)
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.path.unlink(missing_ok=True)
        return True

    async def stop_soon(self, timeout: float, poll: float = 0.02) -> bool:
        """`stop` in a worker thread, so the event loop keeps running while the daemon exits."""
        return await asyncio.to_thread(self.stop, timeout, poll)

    async def wait_running(self, timeout: float, poll: float = 0.02) -> int | None:
        """Until a just-started daemon has written its pid file (or `timeout` s); its pid, or None."""
        for _ in range(max(1, int(timeout / poll))):  # nothing to wait on but the file appearing
            pid = self.running()
            if pid is not None:
                return pid
            await asyncio.sleep(poll)
        return self.running()


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie: neither a child of ours (reaped here) nor anyone else's,
    which its reaper (init, for a detached daemon) may take its time to collect."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False
