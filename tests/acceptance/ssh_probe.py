"""Run in the user's namespace: SSH to HOST as root with the key pair's private key (asyncssh), run COMMAND,
print its output; retry while the guest's SSH server is not answering yet (for TIMEOUT seconds, the optional
fourth argument, default 45)."""

from __future__ import annotations

import asyncio
import sys
import time

import asyncssh


async def main(host: str, key_file: str, command: str, timeout: float = 45.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with asyncssh.connect(host, username="root", client_keys=[key_file], known_hosts=None,
                                        connect_timeout=10) as connection:  # fmt: skip
                result = await connection.run(command, timeout=30)
                sys.stdout.write(str(result.stdout))
                return int(result.exit_status or 0)
        except (OSError, asyncssh.Error) as err:
            if time.monotonic() > deadline:
                print(f"ssh to {host} failed: {err}", file=sys.stderr)
                return 1
            await asyncio.sleep(1)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], *(float(a) for a in sys.argv[4:5]))))
