"""A lost libvirt connection is reopened, and a restarted NC adopts domains that kept running.

The hypervisor here is libvirt's test driver hosted by a private libvirtd (its own /run in a private mount
namespace, its socket in the test's directory), so the test can kill and restart the daemon without touching
the machine's own libvirtd. The daemon's test:///default state lives while any connection holds it, so the test
keeps one open: its domains then outlive the NC's connections, as a real hypervisor's would.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import libvirt
import pytest

from common.rpc import RpcError
from tests.nc.conftest import NcEnv, close_env, make_env
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("libvirtd") is None or shutil.which("unshare") is None,
    reason="needs root, libvirtd and unshare",
)


class PrivateLibvirtd:
    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "libvirtd.conf").write_text(f'unix_sock_dir = "{self.dir}"\nunix_sock_admin_perms = "0700"\n')
        self.process: subprocess.Popen | None = None
        self.holder: libvirt.virConnect | None = None

    @property
    def uri(self) -> str:
        return f"test+unix:///default?socket={self.dir}/libvirt-sock"

    def start(self) -> None:
        script = (
            "mount -t tmpfs tmpfs /run && mkdir -p /run/libvirt && "
            f"exec libvirtd --config {self.dir}/libvirtd.conf --pid-file {self.dir}/libvirtd.pid"
        )
        log = (self.dir / "libvirtd.log").open("ab")
        self.process = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script], stdout=log, stderr=log
        )
        wait_for(lambda: self.virsh("version").returncode == 0, 30, 0.1, "the private libvirtd")
        self.holder = libvirt.open(self.uri)

    def kill(self) -> None:
        assert self.process is not None
        self.holder = None  # its socket dies with the daemon
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        (self.dir / "libvirt-sock").unlink(missing_ok=True)

    def virsh(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True, text=True, timeout=20)

    def domains(self) -> set[str]:
        return set(self.virsh("list", "--name").stdout.split())


@pytest.fixture
def daemon(tmp_path: Path):
    instance = PrivateLibvirtd(tmp_path / "libvirtd")
    instance.start()
    try:
        yield instance
    finally:
        if instance.process and instance.process.poll() is None:
            instance.kill()


def test_reconnect_after_libvirtd_restart(daemon: PrivateLibvirtd, tmp_path: Path) -> None:
    env: NcEnv = make_env(tmp_path / "nc", {"KOALA_LIBVIRT_URI": daemon.uri}, domains=[])
    try:
        manifest = env.image("reconnect")
        env.run("i-c0000001", image="emi-000000c1", manifest=manifest)
        env.wait_state("i-c0000001", "Extant")
        assert "i-c0000001" in daemon.domains()

        daemon.kill()
        # While libvirtd is away the NC still answers, and a launch waits for the connection to come back.
        assert env.describe("i-c0000001")["i-c0000001"].state == "Extant"
        env.run("i-c0000002", image="emi-000000c1", manifest=manifest)
        wait_for(lambda: "domain create failed" in env.cloud.log("nc"), 30, 0.05, "the launch waiting for libvirt")
        daemon.start()  # a new daemon: its test hypervisor no longer runs i-c0000001
        assert env.wait_state("i-c0000002", "Extant", timeout=30).detail == "running"
        gone = env.wait_state("i-c0000001", "Teardown", timeout=30)
        assert gone.reason == "the domain is gone"
        assert "libvirt reconnected" in env.cloud.log("nc")

        # A restarted NC adopts the domain the daemon kept running.
        env.cloud.stop("nc")
        assert "i-c0000002" in daemon.domains()
        env.cloud.start("nc")
        adopted = env.describe("i-c0000002")["i-c0000002"]
        assert adopted.state == "Extant" and "1 adopted" in env.cloud.log("nc")
        env.terminate("i-c0000002")
        assert "i-c0000002" not in daemon.domains()
    finally:
        close_env(env)


def test_nc_starts_before_libvirtd(tmp_path: Path) -> None:
    daemon = PrivateLibvirtd(tmp_path / "libvirtd")  # not started yet
    env: NcEnv = make_env(tmp_path / "nc", {"KOALA_LIBVIRT_URI": daemon.uri, "KOALA_NC_LIBVIRT_WAIT": 0.5}, domains=[])
    try:
        with pytest.raises(RpcError) as err:
            env.resources()
        assert err.value.status == 503 and err.value.code == "NotReady"
        daemon.start()

        def ready() -> bool:
            try:
                return env.resources().cores_max > 0
            except RpcError:
                return False

        wait_for(ready, 30, 0.2, "the NC to come up with libvirtd")
        env.run("i-c0000003", image="emi-000000c1", manifest=env.image("late"))
        assert env.wait_state("i-c0000003", "Extant").detail == "running"
    finally:
        close_env(env)
        if daemon.process is not None:
            daemon.kill()
