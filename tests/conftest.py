from __future__ import annotations

import compileall
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.allinone import qemu_usable
from cli.guest_image import build
from tests.harness import Cloud
from tests.postgres import FAST_SETTINGS, PostgresServer

pytest_plugins = ["tests.ceph"]  # the session's Ceph cluster fixture, `ceph`
ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Byte-compile the project's packages once per session (a no-op when nothing changed): where
    PYTHONDONTWRITEBYTECODE is set, as in this machine's sessions, no process writes .pyc files, so every service and
    `koala` process the tests start would compile from source each module it imports (~0.15 s of CPU per service
    start, ~0.5 s per cloud); with them written here, every one of those processes loads them instead."""
    for package in ("cli", "common", "services"):
        compileall.compile_dir(ROOT / package, quiet=1)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """All four services running, each reporting its peers; one cloud per module (a test that stops a service starts
    it again)."""
    instance = Cloud(tmp_path_factory.mktemp("cloud") / "cloud")
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="session")
def guest_image() -> Path:
    """The guest test image's directory (kernel, initrd, root.img), built by deploy/guest-image/build.sh (cached)."""
    if os.geteuid() != 0 or not qemu_usable():
        pytest.skip("needs root and libvirtd for qemu:///system (deploy/bootstrap.sh)")
    return build()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throw-away PostgreSQL server for the whole test session (started on first use)."""
    server = PostgresServer(settings=FAST_SETTINGS).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def clc_database(request: pytest.FixtureRequest) -> str:
    """Where a module's CLC keeps its state: '' (SQLite in its state directory, the default) or a fresh
    PostgreSQL database. A module whose cloud takes this fixture runs its tests on both engines."""
    if request.param == "sqlite":
        return ""
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database("clc")
