"""The mount table as the kernel shows this process (/proc/self/mounts), its escapes decoded."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_ESCAPE = re.compile(r"\\([0-7]{3})")  # the kernel writes space, tab, newline and backslash as \040, \011, ...


@dataclass(frozen=True)
class Mount:
    source: str
    point: str


def _unescape(field: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def mount_table(path: Path = Path("/proc/self/mounts")) -> list[Mount]:
    """Every mount in the order mounted (a later mount on the same point hides an earlier one); [] if unreadable."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    table = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 2:
            table.append(Mount(_unescape(fields[0]), _unescape(fields[1])))
    return table
