"""Console output: the last 64 KiB of the instance's serial log (Eucalyptus's ncGetConsoleOutput limit)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

CONSOLE_LIMIT = 64 * 1024


def _tail(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(0, size - limit))
            return handle.read(limit)
    except FileNotFoundError:
        return b""


async def tail(path: Path, limit: int = CONSOLE_LIMIT) -> bytes:
    return await asyncio.get_running_loop().run_in_executor(None, _tail, path, limit)
