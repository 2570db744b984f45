"""A test SSH server (asyncssh): public-key logins (and a password, if given), SFTP only, rooted in a directory.

Run inside a network namespace by tests/deploy/test_admin_hosts.py; prints `ready` once it listens.
Usage: sftp_server.py ADDRESS PORT HOST_KEY AUTHORIZED_KEYS ROOT [PASSWORD_FILE]
"""

from __future__ import annotations

import asyncio
import hmac
import sys
from pathlib import Path

import asyncssh


async def main(address: str, port: str, host_key: str, authorized: str, root: str, secret: str | None) -> None:
    class Server(asyncssh.SSHServer):
        def password_auth_supported(self) -> bool:
            return secret is not None

        def validate_password(self, username: str, offered: str) -> bool:
            return secret is not None and hmac.compare_digest(offered, secret)

    class Rooted(asyncssh.SFTPServer):
        def __init__(self, chan: asyncssh.SSHServerChannel):
            super().__init__(chan, chroot=root.encode())

    await asyncssh.create_server(
        Server,
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
    password = Path(sys.argv[6]).read_text().strip() if len(sys.argv) > 6 else None
    asyncio.run(main(*sys.argv[1:6], password))
