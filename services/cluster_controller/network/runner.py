"""Running network commands off the event loop, optionally inside a network namespace.

The runner is injectable: the applier only calls `run(argv)`, so tests can record the exact command plan
(MANAGED's VLAN devices cannot be created on kernels without 8021q) or answer reads from canned output.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger("koala.cc.network")


class CommandFailed(Exception):
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
            process.kill()
            await process.wait()
            raise CommandFailed(full, -9, f"timed out after {self.timeout} s") from None
        result = Result(process.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))
        if check and result.code != 0:
            raise CommandFailed(full, result.code, result.stderr)
        return result


@dataclass
class RecordingRunner:
    """Records every command; answers from `replies` (argv prefix -> stdout), else runs `inner` or returns ""."""

    inner: Runner | None = None
    replies: dict[tuple[str, ...], str] = field(default_factory=dict)
    commands: list[list[str]] = field(default_factory=list)
    inputs: list[str | None] = field(default_factory=list)

    async def run(self, argv: Sequence[str], input: str | None = None, check: bool = True) -> Result:
        self.commands.append(list(argv))
        self.inputs.append(input)
        for prefix, stdout in self.replies.items():
            if tuple(argv[: len(prefix)]) == prefix:
                return Result(0, stdout, "")
        if self.inner is not None:
            return await self.inner.run(argv, input, check)
        return Result(0, "", "")

    def writes(self) -> list[list[str]]:
        """The commands that change something (reads like `ip -j`, `iptables-save`, `sysctl -n` left out), with
        `ip -batch -` expanded into the `ip` commands it ran."""
        out: list[list[str]] = []
        for argv, text in zip(self.commands, self.inputs, strict=True):
            if argv[:3] == ["ip", "-batch", "-"]:
                out += [["ip", *line.split()] for line in (text or "").splitlines() if line.strip()]
            elif not _is_read(argv):
                out.append(argv)
        return out


def _is_read(argv: Sequence[str]) -> bool:
    if not argv:
        return True
    if argv[0] == "ip" and len(argv) > 1 and argv[1] == "-j":
        return True
    if argv[0] in ("iptables-save",):
        return True
    if argv[0] == "sysctl" and "-n" in argv:
        return True
    return argv[0] == "cat"
