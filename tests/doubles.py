"""Test doubles of Koala's host-command layer (`common.hostcmd`): they record the command plan instead of (or
before) changing the host."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from common.hostcmd import Result, Runner


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
