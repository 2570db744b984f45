"""Run in the user's namespace: SSH to HOST as root with the key pair's private key (asyncssh), run COMMAND,
print its output; retry while the guest's SSH server is not answering yet (for TIMEOUT seconds, the optional
fourth argument, default 45). On failure it says what each attempt ran into (the TCP connection or the SSH
handshake, and how), so a guest that cannot be reached is told apart from one too slow to answer.

Tests run it through `run_in`, which gives the process time to finish on its own and say so."""

from __future__ import annotations

import asyncio
import collections
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

warnings.simplefilter("ignore")  # asyncssh's DSA deprecation warnings would bury the probe's own words

import asyncssh  # noqa: E402

if TYPE_CHECKING:
    from tests.network.topology import Topology

TCP_TIMEOUT = 10.0  # one attempt's TCP connection
HANDSHAKE_TIMEOUT = 20.0  # one attempt's SSH handshake and authentication (a guest on a loaded host is slow)
COMMAND_TIMEOUT = 30.0
START_UP = 30.0  # the interpreter and asyncssh's import, on a loaded machine


def run_in(
    topology: Topology, role: str, host: str, key_file: Path | str, command: str, timeout: float = 45.0
) -> subprocess.CompletedProcess:
    """The probe in namespace `role`, allowed its whole course: retries for `timeout` s, then a last attempt (TCP,
    handshake, command). Killed earlier, it could not say why it failed (the timeout of the process alone was
    reported)."""
    limit = timeout + TCP_TIMEOUT + HANDSHAKE_TIMEOUT + COMMAND_TIMEOUT + START_UP
    return topology.run(role, sys.executable, str(Path(__file__)), host, str(key_file), command, str(timeout),
                        check=False, timeout=limit)  # fmt: skip


async def attempt(host: str, key_file: str, command: str) -> asyncssh.SSHCompletedProcess:
    """One attempt, its phases timed apart: an exception's note says which one failed."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (host, 22)), TCP_TIMEOUT)
    except BaseException as err:
        sock.close()
        err.add_note("tcp")
        raise
    try:
        connection = await asyncio.wait_for(
            asyncssh.connect(sock=sock, username="root", client_keys=[key_file], known_hosts=None), HANDSHAKE_TIMEOUT
        )
    except BaseException as err:
        sock.close()
        err.add_note("ssh handshake")
        raise
    async with connection:
        try:
            return await connection.run(command, timeout=COMMAND_TIMEOUT)
        except BaseException as err:
            err.add_note("command")
            raise


async def main(host: str, key_file: str, command: str, timeout: float = 45.0) -> int:
    started = time.monotonic()
    seen: collections.Counter[str] = collections.Counter()
    while True:
        try:
            result = await attempt(host, key_file, command)
            sys.stdout.write(str(result.stdout))
            return int(result.exit_status or 0)
        except (OSError, asyncssh.Error) as err:
            phase = ",".join(getattr(err, "__notes__", [])) or "?"
            seen[f"{phase}: {type(err).__name__} {err}".strip()] += 1
            if time.monotonic() - started > timeout:
                told = "; ".join(f"{what} (x{count})" for what, count in seen.items())
                print(f"ssh to {host} failed: {sum(seen.values())} attempts in {time.monotonic() - started:.0f} s: "
                      f"{told}", file=sys.stderr)  # fmt: skip
                return 1
            await asyncio.sleep(1)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], *(float(a) for a in sys.argv[4:5]))))
