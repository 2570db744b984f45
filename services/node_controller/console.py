"""Console output: the last 64 KiB of the instance's serial log (Eucalyptus's ncGetConsoleOutput limit).

A guest that came here by live migration brought its earlier console with it (`console.history`, written when
the migration was committed): its output is that history followed by what it printed here.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

CONSOLE_LIMIT = 64 * 1024
HISTORY = "console.history"


def _read_tail(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(0, size - limit))
            return handle.read(limit)
    except FileNotFoundError:
        return b""


def _tail(path: Path, limit: int) -> bytes:
    data = _read_tail(path, limit)
    if len(data) < limit:
        data = _read_tail(path.with_name(HISTORY), limit - len(data)) + data
    return data


async def tail(path: Path, limit: int = CONSOLE_LIMIT) -> bytes:
    return await asyncio.get_running_loop().run_in_executor(None, _tail, path, limit)


def _write_history(path: Path, data: bytes) -> None:
    tmp = path.with_name(HISTORY + ".tmp")
    tmp.write_bytes(data[-CONSOLE_LIMIT:])
    tmp.replace(path.with_name(HISTORY))


async def keep_history(log_path: Path, data: bytes) -> None:
    """Keep `data` (a migrated guest's console so far) as the history before `log_path`'s lines."""
    await asyncio.get_running_loop().run_in_executor(None, _write_history, log_path, data)
