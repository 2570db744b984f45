"""Test harness: real service processes on free loopback ports in a temporary state directory.

Processes are started with PR_SET_PDEATHSIG, so they die with the test run even if it is killed, and they
are always stopped at fixture teardown.
"""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
from pathlib import Path

from cli.allinone import ROLES, AllInOne
from common.rpc import RpcClient

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when the test process goes away."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class Cloud:
    """A cloud of real service processes for one test (or module)."""

    def __init__(self, state_dir: Path, roles: tuple[str, ...] = ROLES, extra: dict | None = None):
        self.aio = AllInOne(state_dir)
        self.roles = roles
        # Peers are checked every second, so tests see a peer go and come back quickly.
        settings = {role: {"KOALA_PEER_POLL_SECONDS": 1, **(extra or {}).get(role, {})} for role in ROLES}
        self.aio.prepare(ports={role: free_port() for role in ROLES}, extra=settings)
        self.processes: dict[str, subprocess.Popen] = {}

    @property
    def dir(self) -> Path:
        return self.aio.dir

    def url(self, role: str) -> str:
        return self.aio.endpoints()[role].url

    def start(self, *roles: str) -> None:
        started = {role: self.aio.start(role, preexec_fn=die_with_parent) for role in roles or self.roles}
        self.processes.update(started)
        self.aio.wait_healthy(started)

    def stop(self, *roles: str) -> None:
        for role in roles or reversed(list(self.processes)):
            self.aio.stop(role)
            self.processes.pop(role, None)

    def kill(self, role: str) -> None:
        """SIGKILL, for crash tests."""
        process = self.processes.pop(role)
        process.kill()
        process.wait()

    def log(self, role: str) -> str:
        return self.aio.log_path(role).read_text(errors="replace")

    def admin_client(self) -> RpcClient:
        return self.aio.admin_client()
