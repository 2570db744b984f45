"""The NC's small part of networking (StartNetwork): make sure the bridge a guest will join exists.

Owned by the networking work (issue 8) from here on: MANAGED mode's VLAN device (PUBIF.vlan enslaved to
eucabr<vlan>) belongs here too. For the test hypervisor nothing on the host is touched.
"""

from __future__ import annotations

import asyncio
import logging
import re

log = logging.getLogger("koala.nc.network")
_BRIDGE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


class NetworkError(Exception):
    pass


def valid_bridge(name: str) -> bool:
    return bool(_BRIDGE.match(name)) and name not in (".", "..")


async def _ip(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        "ip", *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode(errors="replace").strip()


async def ensure_bridge(bridge: str, touch_host: bool) -> bool:
    """Create `bridge` (up) if missing. Returns True if it was created. `touch_host` False: validate only."""
    if not valid_bridge(bridge):
        raise NetworkError(f"invalid bridge name {bridge!r}")
    if not touch_host:
        return False
    status, _ = await _ip("link", "show", "dev", bridge)
    if status == 0:
        return False
    status, output = await _ip("link", "add", "name", bridge, "type", "bridge")
    if status != 0 and "File exists" not in output:
        raise NetworkError(f"cannot create bridge {bridge}: {output}")
    status, output = await _ip("link", "set", "dev", bridge, "up")
    if status != 0:
        raise NetworkError(f"cannot bring up bridge {bridge}: {output}")
    log.info("created bridge %s", bridge)
    return True
