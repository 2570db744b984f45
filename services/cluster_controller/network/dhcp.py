"""The DHCP server (dnsmasq from Debian): its configuration, host entries, and the daemon's life.

The configuration (interfaces, subnets, options) and the host file (MAC -> address) are written atomically.
A changed host file is picked up with SIGHUP; a changed configuration, or a host entry gone whose lease would keep
its address from the next guest, restarts the daemon. The daemon runs
detached with a pid file, so DHCP keeps working while the CC restarts, and the CC finds it again afterwards.

dnsmasq drops every signal but TERM until its start-up is over, a moment after its launcher has exited and its pid
file is there, and nothing outside it tells when that is. A host file changed in that moment (a launch right after
the restart a termination made) was read by no one: the new guest got no DHCP answer and came up without an
address. So a SIGHUP sent to a daemon started less than STARTUP_GRACE seconds ago is sent again once that time is
over (reading the host file again is harmless).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from common.daemon import PidFile
from common.hostcmd import CommandFailed, Runner
from services.cluster_controller.network.desired import DhcpSpec

log = logging.getLogger("koala.cc.network")
LEASE_TIME = "12h"
STARTUP_GRACE = 2.0  # seconds after a start within which dnsmasq may have ignored a SIGHUP


def render_conf(spec: DhcpSpec, directory: Path, user: str = "root") -> str:
    lines = [
        "# Written by the Koala cluster controller; changes are overwritten.",
        "port=0",  # DHCP only, no DNS
        "bind-interfaces",
        "dhcp-authoritative",
        "log-dhcp",
        f"user={user}",
        f"pid-file={directory / 'dnsmasq.pid'}",
        f"dhcp-leasefile={directory / 'dnsmasq.leases'}",
        f"dhcp-hostsfile={directory / 'dhcp-hosts'}",
    ]
    lines += [f"interface={name}" for name in spec.interfaces]
    for subnet in spec.subnets:
        lines.append(
            f"dhcp-range=set:{subnet.tag},{subnet.network.network_address},static,{subnet.network.netmask},{LEASE_TIME}"
        )
        lines.append(f"dhcp-option=tag:{subnet.tag},option:router,{subnet.router}")
        lines.append(f"dhcp-option=tag:{subnet.tag},28,{subnet.broadcast}")  # 28: broadcast address
    if spec.dns:
        lines.append(f"dhcp-option=option:dns-server,{','.join(spec.dns)}")
    return "\n".join(lines) + "\n"


def render_hosts(spec: DhcpSpec) -> str:
    return "".join(f"{host.mac},{host.ip},{host.name}\n" for host in spec.hosts)


def _write_if_changed(path: Path, text: str) -> bool:
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


class DhcpServer:
    def __init__(
        self, runner: Runner, directory: Path, program: str = "dnsmasq", user: str = "root", start_wait: float = 5.0
    ):
        self.runner, self.dir, self.program, self.user = runner, directory, program, user
        self.start_wait = start_wait  # how long to wait for the daemon's pid file
        self._started: tuple[int, float] | None = None  # the daemon this server started: (pid, monotonic time)
        self._reload_again: asyncio.Task[None] | None = None

    @property
    def conf_path(self) -> Path:
        return self.dir / "dnsmasq.conf"

    @property
    def pid_path(self) -> Path:
        return self.dir / "dnsmasq.pid"

    @property
    def pid_file(self) -> PidFile:
        return PidFile(self.pid_path, f"--conf-file={self.conf_path}")  # dnsmasq writes it (render_conf)

    def running_pid(self) -> int | None:
        """The pid of our dnsmasq (a stale pid file is ignored)."""
        return self.pid_file.running()

    async def apply(self, spec: DhcpSpec | None) -> list[str]:
        """Bring the daemon and its files to `spec` (None: no DHCP). Returns what was done, for the log."""
        if spec is None:
            return ["stopped"] if await self.stop() else []
        await asyncio.to_thread(self.dir.mkdir, parents=True, exist_ok=True)
        conf_changed = await asyncio.to_thread(
            _write_if_changed, self.conf_path, render_conf(spec, self.dir, self.user)
        )
        hosts_changed = await asyncio.to_thread(_write_if_changed, self.dir / "dhcp-hosts", render_hosts(spec))
        pid = self.running_pid()
        backed = await asyncio.to_thread(self._backed_leases, spec) if hosts_changed else None
        stale = backed is not None
        if pid is not None and (conf_changed or stale):
            await self.stop()
            pid = None
        if backed is not None:
            await asyncio.to_thread(_write_if_changed, self.dir / "dnsmasq.leases", backed)
        if pid is None:
            await self.runner.run([self.program, f"--conf-file={self.conf_path}"])
            started = await self.pid_file.wait_running(self.start_wait)  # dnsmasq writes it once it forked
            self._started = (started, time.monotonic()) if started is not None else None
            return ["started, stale leases dropped" if stale else "started"]
        if hosts_changed:
            await self._reload(pid)
            return ["reloaded"]
        return []

    async def _reload(self, pid: int) -> None:
        """SIGHUP: dnsmasq reads its host file again; once more at the end of its start-up grace if it is young."""
        await self.runner.run(["kill", "-HUP", str(pid)])
        if self._started is None or self._started[0] != pid:
            return
        left = self._started[1] + STARTUP_GRACE - time.monotonic()
        if left > 0 and (self._reload_again is None or self._reload_again.done()):
            self._reload_again = asyncio.create_task(self._reload_later(pid, left), name="dhcp reload again")

    async def _reload_later(self, pid: int, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.running_pid() != pid:
            return  # stopped or restarted meanwhile: a new daemon read the file as it started
        try:
            await self.runner.run(["kill", "-HUP", str(pid)])
        except CommandFailed as err:  # it exited just now; the next apply starts it again
            log.warning("dnsmasq %d: reload after its start-up failed: %s", pid, err)

    def _backed_leases(self, spec: DhcpSpec) -> str | None:
        """The lease file without the leases no host entry backs any more, or None when there are none such.
        dnsmasq keeps a departed guest's lease until it expires and will not give that address to the next guest's
        MAC meanwhile; every address here is a static host entry, so such a lease is only in the way. The file is
        rewritten with the daemon stopped (it owns the file)."""
        try:
            lines = (self.dir / "dnsmasq.leases").read_text().splitlines()
        except OSError:
            return None
        wanted = {(host.mac.lower(), host.ip) for host in spec.hosts}

        def backed(line: str) -> bool:  # "<expiry> <mac> <ip> <name> <client id>"; other lines (duid) stay
            fields = line.split()
            return len(fields) < 3 or fields[0] == "duid" or (fields[1].lower(), fields[2]) in wanted

        kept = [line for line in lines if backed(line)]
        return None if len(kept) == len(lines) else "".join(f"{line}\n" for line in kept)

    async def stop(self) -> bool:
        if self._reload_again is not None:
            self._reload_again.cancel()
            self._reload_again = None
        return await self.pid_file.stop_soon(timeout=5.0)  # up to 5 s for a clean exit
