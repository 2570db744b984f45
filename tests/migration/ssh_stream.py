"""Run in the user's namespace: hold an SSH session to HOST (root, KEY) running COMMAND, and write each line it
prints to OUT with the local time (`<unix time> <line>`). When the session breaks, note it (`<time> #broken`) and
reconnect, until killed. The test reads OUT to see whether a session survived a migration."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

import asyncssh


async def main(host: str, key_file: str, command: str, out: TextIO) -> None:
    while True:
        try:
            async with asyncssh.connect(host, username="root", client_keys=[key_file], known_hosts=None,
                                        connect_timeout=10, keepalive_interval=0) as connection:  # fmt: skip
                out.write(f"{time.time():.3f} #connected\n")
                async with connection.create_process(command) as process:
                    async for line in process.stdout:
                        out.write(f"{time.time():.3f} {line.rstrip()}\n")
        except (OSError, asyncssh.Error) as err:
            out.write(f"{time.time():.3f} #broken {type(err).__name__}\n")
        await asyncio.sleep(0.5)


if __name__ == "__main__":
    with open(sys.argv[4], "a", buffering=1) as output:
        asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], output))
