"""`koala up --scale-out`: the all-in-one cloud on the distributed engines (PostgreSQL, Ceph) with a second process of
the services that can have several (deploy/clc-postgresql.md, deploy/ceph.md), on one machine.

- Two CLCs on the cloud's PostgreSQL, one active and one standing by (answering 503), sharing one state
  directory (only the active one writes in it). HAProxy (Debian's haproxy), the "door", listens on the CLC's
  endpoint port and sends each request to the CLC whose /healthz answers 200, as deploy/clc-postgresql.md's load
  balancer does: users, the CC and Walrus reach whichever CLC is active there. The guests' metadata socket in the
  router namespace is given to both CLCs; only the active one listens on it (cli/cloud_network.py).
- Two Walrus front ends on the shared store (metadata in PostgreSQL, data in Ceph), each with its own state
  directory (its bundled-image cache): endpoints.json's `walrus` and `walrus2`.

No supervisor restarts a CLC that dies or loses its leadership (systemd does in a real deployment): the standby
takes over, and the next `koala up` starts the dead one again, as a standby.
"""

from __future__ import annotations

import json
import socket
from typing import TYPE_CHECKING

from common.config import parse_conf, render_conf

if TYPE_CHECKING:
    from cli.allinone import AllInOne

DOOR = "clc-door"  # the CLCs' HAProxy, a process of the cloud like the services
SECOND_OF = {"clc2": "clc", "walrus2": "walrus"}  # the second process -> the service it runs


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def door_config(host: str, port: int, clcs: list[int]) -> str:
    """HAProxy in front of the CLCs (deploy/clc-postgresql.md's), on host:port."""
    servers = "\n".join(f"    server clc{n} {host}:{clc} check" for n, clc in enumerate(clcs, start=1))
    return f"""# The CLCs' door, written by `koala up --scale-out` (cli/scale_out.py).
defaults
    mode http
    timeout connect 2s
    timeout client 300s
    timeout server 300s
    retries 5
    option redispatch
    retry-on 503 conn-failure empty-response

frontend clc
    bind {host}:{port}
    default_backend clcs

backend clcs
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter 1s fall 2 rise 1
{servers}
"""


def add_members(cloud: AllInOne, clc_ports: tuple[int, int], walrus_port: int) -> None:
    """After `prepare` (its `clc` on clc_ports[0] behind the door on the endpoint's port): the second CLC, the
    second Walrus and the door's configuration, and their entries in endpoints.json."""

    def values(role: str) -> dict[str, object]:
        return {key: setting.value for key, setting in parse_conf(cloud.conf_path(role).read_text()).items()}

    def write(role: str, settings: dict[str, object]) -> None:
        path = cloud.conf_path(role)
        path.write_text(render_conf(settings, f"Koala {role}, written by `koala up --scale-out`."))
        path.chmod(0o600)  # the database URL carries a password

    write("clc2", {**values("clc"), "KOALA_CLC_PORT": clc_ports[1]})  # the same state directory
    walrus_dir = cloud.dir / "data" / "walrus2"
    walrus_dir.mkdir(parents=True, exist_ok=True)
    write("walrus2", {**values("walrus"), "KOALA_WALRUS_PORT": walrus_port, "KOALA_STATE_DIR": walrus_dir})
    endpoints = json.loads(cloud.endpoints_path.read_text())
    cloud.conf_path(DOOR).write_text(door_config(cloud.host, endpoints["clc"]["port"], list(clc_ports)))
    for role, port in (("clc2", clc_ports[1]), ("walrus2", walrus_port)):
        service = SECOND_OF[role]
        url = f"http://{cloud.host}:{port}"
        endpoints[role] = {"id": endpoints[service]["id"], "url": url, "port": port, "role": service}
    cloud.endpoints_path.write_text(json.dumps(endpoints, indent=2) + "\n")
