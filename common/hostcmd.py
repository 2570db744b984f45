"""The one way Koala runs host commands (ip, iptables, dnsmasq, qemu-img, mkswap, tgtadm...): off the event loop as
asyncio subprocesses, with input, a timeout, and optionally inside a network namespace.

Consumers take a `Runner` (the protocol), so tests can record the exact command plan (MANAGED's VLAN devices cannot
be created on kernels without 8021q) or answer reads from canned output; the recording double lives in
`tests/doubles.py`, not here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class CommandFailed(Exception):
    """A command exited non-zero (or timed out: code -9); `stderr` holds what it said."""

    def __init__(self, argv: Sequence[str], code: int, stderr: str):
        super().__init__(f"{' '.join(argv)} exited with {code}: {stderr.strip()[:500]}")
        self.argv, self.code, self.stderr = list(argv), code, stderr


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


class Runner(Protocol):
    async def run(self, argv: Sequence[str], input: str | None = None, check: bool = True) -> Result: ...


class SubprocessRunner:
    """Runs commands with asyncio subprocesses; with `netns`, each one through `ip netns exec NS`."""

    def __init__(self, netns: str = "", timeout: float = 30.0):
        # Every command has a deadline: a wedged tool must not hold a control loop forever.
        self.netns, self.timeout = netns, timeout

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)

    async def run(self, argv: Sequence[str], input: str | None = None, check: bool = True) -> Result:
        full = self.argv(argv)
        process = await asyncio.create_subprocess_exec(
            *full,
            stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(
                process.communicate(input.encode() if input is not None else None), self.timeout
            )
        except TimeoutError:
            await _kill(process)
            raise CommandFailed(full, -9, f"timed out after {self.timeout} s") from None
        except asyncio.CancelledError:
            await _kill(process)
            raise
        result = Result(process.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))
        if check and result.code != 0:
            raise CommandFailed(full, result.code, result.stderr)
        return result


async def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.kill()
        await process.wait()
