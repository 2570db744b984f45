"""A libvirtd of its own inside a network namespace (DESIGN section 8's recipe), so the taps of its guests are
made in that namespace and never appear on the host.

It runs in a private mount namespace with its own /run (a tmpfs) and, bound over the host's, its own
/etc/libvirt, /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt from `dir/root`: two such daemons, or one
beside the host's own libvirtd, share nothing. Clients reach it over the unix socket in `dir/sock`. Used by the
all-in-one cloud (its router namespace) and by the migration tests and bench (one per host namespace).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# The programs this needs, with QEMU (deploy/bootstrap.sh installs them).
PROGRAMS = ("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64", "unshare")


class LibvirtdError(Exception):
    pass


@dataclass
class NamespaceLibvirtd:
    netns: str
    dir: Path
    libvirtd_conf: str = ""  # more libvirtd.conf lines (the migration hosts' TLS listener)
    qemu_conf: str = ""
    listen: bool = False  # --listen: accept TCP/TLS connections as libvirtd_conf says
    # /var/cache/libvirt (default dir/root/cache). libvirtd probes QEMU's capabilities into it at its first start,
    # seconds of QEMU runs: daemons given one shared cache probe once per machine, not once per state directory.
    cache: Path | None = None

    @property
    def socket(self) -> Path:
        return self.dir / "sock" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.socket}"

    @property
    def pid_path(self) -> Path:
        return self.dir / "libvirtd.pid"

    @property
    def log_path(self) -> Path:
        return self.dir / "libvirtd.log"

    def running(self) -> int | None:
        """libvirtd's pid when it runs (checked against its command line, as pid files go stale)."""
        try:
            pid = int(self.pid_path.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if b"libvirtd" in cmdline and str(self.pid_path).encode() in cmdline else None

    def start(self, timeout: float = 60.0) -> int:
        """Start the daemon (detached: it outlives the caller) unless it runs; return once it answers."""
        started = self.spawn()
        self.wait_ready(started, timeout)
        return started.pid if started is not None else self.running() or 0

    def spawn(self) -> subprocess.Popen | None:
        """Start the daemon unless it runs, without waiting for it (None: it ran already)."""
        if self.running() is not None:
            return None
        root = self.dir / "root"
        cache = self.cache or root / "cache"
        for sub in ("etc", "lib", "log"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        cache.mkdir(parents=True, exist_ok=True)
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        (root / "lib").chmod(0o755)  # the qemu user walks through /var/lib/libvirt
        conf = root / "etc"
        # libvirtd runs on one CPU: its cached QEMU capabilities hold the host's CPUID leaves, one of which (0x1f)
        # names the CPU that read it, and a cache read on another CPU is judged stale and QEMU probed again (~8 s).
        # QEMU is not held to it: libvirt gives every guest all the host's CPUs.
        (conf / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{self.socket.parent}"\nunix_sock_admin_perms = "0700"\n' + self.libvirtd_conf
        )
        (conf / "qemu.conf").write_text(self.qemu_conf)
        script = " && ".join(
            [
                "mount -t tmpfs tmpfs /run",
                "mkdir -p /run/libvirt",
                f"mount --bind {conf} /etc/libvirt",
                f"mount --bind {root}/lib /var/lib/libvirt",
                f"mount --bind {cache} /var/cache/libvirt",
                f"mount --bind {root}/log /var/log/libvirt",
                f"virtlogd -d --pid-file {self.dir}/virtlogd.pid",
                f"exec taskset -c {min(os.sched_getaffinity(0))} libvirtd {'--listen ' if self.listen else ''}"
                f"--config {conf}/libvirtd.conf --pid-file {self.pid_path}",
            ]
        )
        self.pid_path.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                ["ip", "netns", "exec", self.netns, "unshare", "-m", "--propagation", "private", "sh", "-c", script],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_ready(self, started: subprocess.Popen | None, timeout: float = 60.0) -> None:
        """Wait until the daemon answers (`started`: what spawn returned, to notice an early exit)."""
        deadline = time.monotonic() + timeout
        while self.virsh("version", check=False).returncode:
            if started is not None and started.poll() is not None:
                raise LibvirtdError(f"libvirtd in {self.netns} exited with status {started.returncode}: {self._tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise LibvirtdError(f"libvirtd in {self.netns} did not answer in {timeout:.0f} s: {self._tail()}")
            time.sleep(0.05)

    def _tail(self, size: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:].strip()
        except OSError:
            return "(no log)"

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True, text=True, timeout=60)
        if check and result.returncode:
            raise LibvirtdError(f"virsh {' '.join(args)}: {result.stderr.strip()}")
        return result

    def stop(self, timeout: float = 20.0) -> None:
        """End libvirtd, then its virtlogd (both by their own pids: they live in a private /run). Guests keep
        running: destroy them first if they should not."""
        pid = self.running()
        if pid is not None:
            _end(pid, timeout)
        with contextlib.suppress(OSError, ValueError):
            virtlogd = int((self.dir / "virtlogd.pid").read_text().strip())
            if b"virtlogd" in Path(f"/proc/{virtlogd}/cmdline").read_bytes():
                _end(virtlogd, timeout)


def _end(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _zombie(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True
