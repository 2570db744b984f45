"""A test SSH server (asyncssh): public-key logins only, SFTP only, rooted in a directory.

Run inside a network namespace by tests/deploy/test_admin_hosts.py; prints `ready` once it listens.
Usage: sftp_server.py ADDRESS PORT HOST_KEY AUTHORIZED_KEYS ROOT
"""

from __future__ import annotations

import asyncio
import sys

import asyncssh


async def main(address: str, port: str, host_key: str, authorized: str, root: str) -> None:
    class Rooted(asyncssh.SFTPServer):
        def __init__(self, chan: asyncssh.SSHServerChannel):
            super().__init__(chan, chroot=root.encode())

    await asyncssh.create_server(
        asyncssh.SSHServer,
        address,
        int(port),
        server_host_keys=[host_key],
        authorized_client_keys=authorized,
        sftp_factory=Rooted,
        allow_scp=False,
    )
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
