"""A single-node Ceph cluster (cli/ceph_local.py: monitor, manager, one BlueStore OSD on a sparse file) started
once per test session, on loopback, in a temporary directory; and the settings that point a service at it.

Each user of the cluster gets its own pool or namespace (`unique`), so modules and parallel runs never share
data. The daemons die with the test run (PR_SET_PDEATHSIG), even if it is killed.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from cli.ceph_local import EBS_POOL, WALRUS_POOL, CephCluster
from tests.harness import die_with_parent


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def ceph_settings(cluster: CephCluster) -> dict[str, str]:
    """KOALA_CEPH_* for a service, as client.koala."""
    return cluster.client_settings()


def walrus_rados_settings(cluster: CephCluster, namespace: str | None = None) -> dict[str, str]:
    """A Walrus keeping its object data in the session's cluster, in a namespace of its own."""
    return {
        **ceph_settings(cluster),
        "KOALA_WALRUS_STORAGE": "rados",
        "KOALA_WALRUS_RADOS_POOL": WALRUS_POOL,
        "KOALA_WALRUS_RADOS_NAMESPACE": namespace or unique("walrus"),
    }


@pytest.fixture(scope="session")
def ceph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephCluster]:
    missing = [tool for tool in ("ceph-mon", "ceph-mgr", "ceph-osd") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs Debian's ceph packages ({', '.join(missing)} missing; deploy/bootstrap.sh)")
    cluster = CephCluster.create(tmp_path_factory.mktemp("ceph"), preexec=die_with_parent)
    try:
        cluster.create_pool(WALRUS_POOL, "rados")
        cluster.create_pool(EBS_POOL, "rbd")
        yield cluster
    finally:
        cluster.stop()


@contextlib.contextmanager
def pool_io(cluster: CephCluster, pool: str) -> Iterator[Any]:
    """An I/O context on `pool`, as the cluster's admin (tests look behind the services' backs with it)."""
    import rados

    handle = rados.Rados(conffile=str(cluster.conf), rados_id="admin")
    handle.connect(timeout=20)
    try:
        with handle.open_ioctx(pool) as ioctx:
            yield ioctx
    finally:
        handle.shutdown()


def rbd_images(cluster: CephCluster, pool: str) -> set[str]:
    import rbd

    with pool_io(cluster, pool) as ioctx:
        return set(rbd.RBD().list(ioctx))
