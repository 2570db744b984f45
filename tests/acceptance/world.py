"""The acceptance world, shared by the acceptance test and bench/deploy_bench.py: the four services (the NC on
qemu:///system) and the network a user meets them through.

    pub ns (the user's SSH client) --pub0-- rtr ns (the CC's router: KOALA_VNET_NETNS) --priv0-- bridge (root ns,
    made by the NC; guests' taps) ; rtr --md0-- root ns (the CLC, for the metadata redirect)

Traffic goes only to loopback and to these namespaces.
"""

from __future__ import annotations

import fcntl
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cli.allinone import ROLES
from tests.harness import Cloud
from tests.network.topology import Topology
from tests.waiting import wait_for

SUBNET, PUBLIC, METADATA_LINK = "10.216.0.0", "10.218.0", "10.217.0"
LOCKS = Path("/run/lock")
NETWORKS_WAIT = 600.0  # seconds a world waits for another run on the same networks to end


@dataclass
class World:
    cloud: Cloud
    topology: Topology
    bridge: str
    instances: Path


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True)


@contextmanager
def _networks_held(*nets: str) -> Iterator[None]:
    """These networks for this world alone on this machine while it lives. The route to the private /16 and the
    metadata link's address are the root namespace's: a second world on them (the same test in another run, a
    bench) replaced the first one's route, so the first one's guests got DHCP but never an answer from the metadata
    service (no key pair, no SSH), and the second's teardown deleted the route of whichever was left. A world waits
    for the other to end (a flock per network, released when its process ends, however it ends)."""
    with ExitStack() as held:
        for net in sorted(nets):
            lock = held.enter_context((LOCKS / f"koala-world-net-{net}.lock").open("w"))

            def taken(lock: IO[str] = lock) -> bool:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
                return True

            wait_for(taken, NETWORKS_WAIT, 1.0, f"network {net}, in use by another run on this machine")
        yield


@contextmanager
def acceptance_world(
    work: Path,
    instances: Path,
    prefix: str = "ka",
    extra: dict[str, dict] | None = None,
    nets: tuple[str, str, str] = (SUBNET, PUBLIC, METADATA_LINK),
    roles: tuple[str, ...] = ROLES,
) -> Iterator[World]:
    """Build the namespaces and links, start the cloud; take it all down on the way out. `instances` must be
    readable by libvirt's qemu user; `prefix` (two letters) keeps the host's link names apart per user; `extra`
    adds settings per role; `nets` (the private /16, the public and the metadata link's first three octets) keeps
    another user's routes apart; `roles` are the services started (without "nc", the test brings its own nodes)."""
    SUBNET, PUBLIC, METADATA_LINK = nets
    tag = secrets.token_hex(2)
    bridge, router_port, md_port = f"{prefix}br{tag}", f"{prefix}pr{tag}", f"{prefix}md{tag}"
    topology = Topology(work)
    cloud = None
    with _networks_held(SUBNET, METADATA_LINK):
        try:
            topology.add_ns("rtr")
            topology.add_ns("pub")
            _sh("ip", "link", "add", bridge, "type", "bridge")
            _sh("ip", "link", "set", bridge, "up")
            _sh("ip", "link", "add", router_port, "type", "veth", "peer", "name", "priv0", "netns", topology.ns("rtr"))
            _sh("ip", "link", "set", router_port, "master", bridge, "up")
            topology.run("rtr", "ip", "link", "set", "priv0", "up")
            topology.veth("pub", "eth0", "rtr", "pub0")
            topology.run("pub", "ip", "addr", "add", f"{PUBLIC}.2/24", "dev", "eth0")
            topology.run("rtr", "ip", "addr", "add", f"{PUBLIC}.1/24", "dev", "pub0")
            _sh("ip", "link", "add", md_port, "type", "veth", "peer", "name", "md0", "netns", topology.ns("rtr"))
            _sh("ip", "addr", "add", f"{METADATA_LINK}.1/30", "dev", md_port)
            _sh("ip", "link", "set", md_port, "up")
            topology.run("rtr", "ip", "addr", "add", f"{METADATA_LINK}.2/30", "dev", "md0")
            topology.run("rtr", "ip", "link", "set", "md0", "up")
            # Metadata replies from the CLC go back through the router.
            _sh("ip", "route", "replace", f"{SUBNET}/16", "via", f"{METADATA_LINK}.2", "dev", md_port)

            settings = {
                "clc": {"KOALA_BIND": "0.0.0.0"},
                "cc": {
                    "VNET_MODE": "MANAGED-NOVLAN", "VNET_SUBNET": SUBNET, "VNET_NETMASK": "255.255.0.0",
                    "VNET_ADDRSPERNET": 32, "VNET_PUBINTERFACE": "pub0", "VNET_PRIVINTERFACE": "priv0",
                    "VNET_BRIDGE": bridge, "VNET_PUBLICIPS": f"{PUBLIC}.100-{PUBLIC}.109",
                    "VNET_CLOUDIP": f"{METADATA_LINK}.1", "VNET_DNS": f"{METADATA_LINK}.1",
                    "KOALA_VNET_NETNS": topology.ns("rtr"),
                },
                "nc": {
                    "HYPERVISOR": "qemu", "VNET_MODE": "MANAGED-NOVLAN", "VNET_BRIDGE": bridge,
                    "INSTANCE_PATH": instances, "SWAP_SIZE": 32, "KOALA_NC_CONFIG_DRIVE": "false",
                    "KOALA_NC_REBOOT_GRACE_SECONDS": 3,  # the test guest ignores ACPI reboots: reset it soon
                },
            }  # fmt: skip
            for role, values in (extra or {}).items():
                settings[role] = {**settings.get(role, {}), **values}
            cloud = Cloud(work / "cloud", roles=roles, extra=settings)
            cloud.start()
            yield World(cloud, topology, bridge, instances)
        finally:
            if cloud is not None:
                cloud.stop()
            subprocess.run(["ip", "route", "del", f"{SUBNET}/16"], capture_output=True)
            for link in (md_port, router_port, bridge):
                subprocess.run(["ip", "link", "del", link], capture_output=True)
            topology.cleanup()
