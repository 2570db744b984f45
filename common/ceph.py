"""Reaching a Ceph cluster through librados (Debian's python3-rados), for the services that keep data there:
Walrus's objects (RADOS) and the zone's EBS volumes (RBD).

`CephSettings` is the configuration mixin (one ceph.conf and one client key per host, as Ceph deploys them);
`connect` opens a cluster handle off the event loop. librados is imported only when a service is configured to
use Ceph, so the embedded defaults need no Ceph packages.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

CONNECT_TIMEOUT = 20  # seconds: monitors that do not answer fail the service's start, not hang it


class CephError(RuntimeError):
    """The cluster cannot be reached or refused an operation."""


class CephSettings(BaseModel):
    KOALA_CEPH_CONF: Path | None = Field(
        None, description="The ceph.conf naming the cluster's monitors (needed when a service stores data in Ceph)."
    )
    KOALA_CEPH_USER: str = Field(
        "koala", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="The Ceph client name Koala uses (client.NAME)."
    )
    KOALA_CEPH_KEYRING: Path | None = Field(
        None, description="The keyring holding that client's key (default: as ceph.conf says for client.NAME)."
    )


def load_rados() -> Any:
    try:
        import rados  # Debian's python3-rados; bootstrap makes the venv see it
    except ImportError as err:
        raise CephError("librados' Python binding is missing (install python3-rados; see deploy/bootstrap.sh)") from err
    return rados


async def connect(settings: CephSettings) -> Any:
    """A connected rados.Rados handle as client.KOALA_CEPH_USER; CephError when the cluster does not answer."""
    if settings.KOALA_CEPH_CONF is None:
        raise CephError("KOALA_CEPH_CONF is not set")
    rados = load_rados()
    options = {"keyring": str(settings.KOALA_CEPH_KEYRING)} if settings.KOALA_CEPH_KEYRING else {}
    options["client_mount_timeout"] = str(CONNECT_TIMEOUT)

    def open_cluster() -> Any:
        cluster = rados.Rados(conffile=str(settings.KOALA_CEPH_CONF), rados_id=settings.KOALA_CEPH_USER, conf=options)
        try:
            cluster.connect(timeout=CONNECT_TIMEOUT)
        except rados.Error as err:
            cluster.shutdown()
            raise CephError(f"cannot reach the Ceph cluster of {settings.KOALA_CEPH_CONF}: {err}") from err
        return cluster

    return await asyncio.get_running_loop().run_in_executor(None, open_cluster)


async def open_pool(cluster: Any, pool: str, namespace: str = "") -> Any:
    """An I/O context on `pool` (in `namespace`); CephError if the pool does not exist."""
    rados = load_rados()

    def open_ioctx() -> Any:
        try:
            ioctx = cluster.open_ioctx(pool)
        except rados.ObjectNotFound as err:
            raise CephError(f"Ceph pool {pool!r} does not exist (create it: ceph osd pool create {pool})") from err
        if namespace:
            ioctx.set_namespace(namespace)
        return ioctx

    return await asyncio.get_running_loop().run_in_executor(None, open_ioctx)
