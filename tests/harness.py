"""Test harness: real service processes on free loopback ports in a temporary state directory.

Processes are started with PR_SET_PDEATHSIG, so they die with the test run even if it is killed, and they
are always stopped at fixture teardown.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cli.allinone import ROLES, AllInOne
from common.config import parse_conf, render_conf
from common.rpc import RpcClient
from services.cloud_controller.admin.passwords import LoginFile, hash_password

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when the test process goes away."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def free_port_run(count: int, host: str = "127.0.0.1") -> int:
    """The first of `count` consecutive free ports (below the ephemeral range, so no client takes them meanwhile)."""
    rng = random.Random()
    while True:
        base = rng.randrange(20000, 32000)
        with contextlib.ExitStack() as probes:
            try:
                for port in range(base, base + count):
                    probes.enter_context(socket.socket()).bind((host, port))
            except OSError:
                continue
        return base


@functools.cache
def admin_web_login() -> tuple[str, str]:
    """The admin web login the harness's clouds start with: a password and its scrypt hash, made once per session
    (each hash costs about half a second of CPU, which every CLC's first start would otherwise spend again)."""
    password = secrets.token_urlsafe(18)
    return password, hash_password(password)


class Cloud:
    """A cloud of real service processes for one test (or module). The CLC finds its admin web login already
    there (`admin_web_login`, written as its first start would) unless `fresh_admin_login` asks it to make its own."""

    def __init__(
        self,
        state_dir: Path,
        roles: tuple[str, ...] = ROLES,
        extra: dict | None = None,
        fresh_admin_login: bool = False,
    ):
        self.aio = AllInOne(state_dir)
        self.roles = roles
        # Peers are checked every second, so tests see a peer go and come back quickly. The NC's simulated host
        # (test driver) gets a fixed disk, so capacity does not depend on how full this machine's disk is.
        defaults = {role: {"KOALA_PEER_POLL_SECONDS": 1} for role in ROLES}
        defaults["nc"]["MAX_DISK"] = 1000
        settings = {role: {**defaults[role], **(extra or {}).get(role, {})} for role in ROLES}
        self.aio.prepare(ports={role: free_port() for role in ROLES}, extra=settings, ebs_port=free_port())
        if not fresh_admin_login:
            LoginFile(self.dir / "data" / "clc").ensure_initial(admin_web_login())
        self.processes: dict[str, subprocess.Popen] = {}
        self.extra_nodes: list[ExtraNode] = []

    @property
    def dir(self) -> Path:
        return self.aio.dir

    def url(self, role: str) -> str:
        return self.aio.endpoints()[role].url

    def start(self, *roles: str) -> None:
        started = {role: self.aio.start(role, preexec_fn=die_with_parent) for role in roles or self.roles}
        self.processes.update(started)
        self.aio.wait_healthy(started)

    def stop(self, *roles: str) -> None:
        """Stop `roles` (all, the extra nodes first, without any); each is asked at once and waited for together,
        not one after the other: a graceful stop takes about 0.1 s per service."""
        with ThreadPoolExecutor(max_workers=8) as pool:
            if not roles:
                list(pool.map(lambda node: node.stop(), self.extra_nodes))
            list(pool.map(self.aio.stop, roles or list(self.processes)))
        for role in roles or list(self.processes):
            self.processes.pop(role, None)

    def kill(self, role: str) -> None:
        """SIGKILL, for crash tests."""
        process = self.processes.pop(role)
        process.kill()
        process.wait()

    def log(self, role: str) -> str:
        return self.aio.log_path(role).read_text(errors="replace")

    def admin_client(self) -> RpcClient:
        return self.aio.admin_client()

    def admin_credentials(self) -> dict[str, str]:
        """The cloud admin's eucarc values (EC2_URL, EC2_ACCESS_KEY, EC2_SECRET_KEY, ...), as the CLC wrote them."""
        from services.cloud_controller.identity.credentials import parse_eucarc

        return parse_eucarc(self.aio.admin_eucarc_source())

    def add_node(self, name: str, port: int | None = None, extra: dict | None = None) -> ExtraNode:
        """Another NC process `nc-<name>` (own certificate, port, config, state and log), not yet started;
        stopped with the cloud."""
        node = ExtraNode(self, name, port or free_port(), extra or {})
        self.extra_nodes.append(node)
        return node


class ServiceProcess:
    """One more Koala service of a Cloud run as its own process from its own config file (`role` says which
    `koala` subcommand), logging to `log_path`, inside the network namespace `netns` if one is named: started
    (until /healthz answers), stopped, or killed -9."""

    role: str
    cloud: Cloud
    id: str
    url: str
    conf_path: Path
    log_path: Path
    process: subprocess.Popen | None = None
    netns: str | None = None

    def spawn(self) -> subprocess.Popen:
        inside = ["ip", "netns", "exec", self.netns] if self.netns else []
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*inside, sys.executable, "-m", "cli", self.role, "--config", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                preexec_fn=die_with_parent,
                cwd=self.cloud.dir,
            )
        return self.process

    def start(self, timeout: float = 60.0) -> None:
        process = self.spawn()
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{self.id} exited with status {process.returncode}:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=0.5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.id} not healthy after {timeout:.0f} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL, for crash tests."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class ExtraNode(ServiceProcess):
    """An extra node controller of a Cloud, for multi-node tests: configured like the cloud's own NC."""

    role = "nc"

    def __init__(self, cloud: Cloud, name: str, port: int, extra: dict):
        self.cloud, self.id, self.port = cloud, f"nc-{name}", port
        self.url = f"http://127.0.0.1:{port}"
        cloud.aio.pki.ensure(self.id, "nc")
        self.data_dir = cloud.dir / "data" / self.id
        self.data_dir.mkdir(parents=True, exist_ok=True)
        base = {key: s.value for key, s in parse_conf(cloud.aio.conf_path("nc").read_text()).items()}
        values = {**base, "KOALA_SERVICE_ID": self.id, "KOALA_STATE_DIR": self.data_dir, "NC_PORT": port, **extra}
        self.conf_path = cloud.dir / "conf" / f"{self.id}.conf"
        self.conf_path.write_text(render_conf(values, f"Koala extra node {self.id}, written by the test harness."))
        self.log_path = cloud.dir / "logs" / f"{self.id}.log"
        self.process = None
