"""Hosts as network namespaces for networking tests: an outside client, the CC (router), a node with its
bridge, guests (namespaces standing in for VMs), and a metadata host. Everything is created under a unique
prefix and removed at the end, even when a test fails; traffic stays inside these namespaces.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

NETTOOL = Path(__file__).with_name("nettool.py")


def sh(*argv: str, check: bool = True, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout)
    if check and result.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result


class Topology:
    def __init__(self, work: Path):
        self.prefix = "k" + secrets.token_hex(3)
        self.work = work
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen] = []

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def add_ns(self, role: str) -> str:
        name = self.ns(role)
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        self.run(role, "ip", "link", "set", "lo", "up")
        return name

    def run(
        self, role: str, *argv: str, check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.ns(role), *argv, check=check, input=input, timeout=timeout)

    def veth(self, a: str, a_if: str, b: str, b_if: str, mac_b: str = "") -> None:
        sh("ip", "link", "add", a_if, "netns", self.ns(a), "type", "veth", "peer", "name", b_if, "netns", self.ns(b))
        if mac_b:
            self.run(b, "ip", "link", "set", b_if, "address", mac_b)
        self.run(a, "ip", "link", "set", a_if, "up")
        self.run(b, "ip", "link", "set", b_if, "up")

    def spawn(self, role: str, *args: str) -> subprocess.Popen:
        """A nettool process in a namespace; waits until it says it is ready."""
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(role), sys.executable, str(NETTOOL), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.processes.append(process)
        line = process.stdout.readline() if process.stdout else ""
        if line.strip() != "ready":
            raise RuntimeError(
                f"nettool {args} in {role} did not start: {process.stderr.read() if process.stderr else ''}"
            )
        return process

    def connect(self, role: str, host: str, port: int, timeout: float = 0.6, source: str = "") -> str:
        extra = [source] if source else []
        argv = [sys.executable, str(NETTOOL), "connect", host, str(port), str(timeout), *extra]
        return self.run(role, *argv).stdout.strip()

    def get(self, role: str, url: str) -> str:
        return self.run(role, sys.executable, str(NETTOOL), "get", url).stdout.strip()

    def dhcp(self, role: str, interface: str = "eth0") -> dict[str, str]:
        """Ask for an address with busybox udhcpc; configure what it answered; return its variables."""
        script = self.work / f"udhcpc-{role}.sh"
        out = self.work / f"udhcpc-{role}.env"
        out.unlink(missing_ok=True)
        script.write_text(f'#!/bin/sh\n[ "$1" = bound ] && env > {out}\nexit 0\n')
        script.chmod(0o755)
        self.run(role, "busybox", "udhcpc", "-i", interface, "-n", "-q", "-f", "-t", "6", "-T", "1", "-s", str(script))
        values = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
        prefix = sum(bin(int(octet)).count("1") for octet in values["subnet"].split("."))
        self.run(role, "ip", "addr", "replace", f"{values['ip']}/{prefix}", "dev", interface)
        self.run(role, "ip", "route", "replace", "default", "via", values["router"].split()[0])
        return values

    def iptables_save(self, role: str) -> str:
        return self.run(role, "iptables-save").stdout

    def cleanup(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with contextlib.suppress(Exception):
                process.wait(timeout=5)
        # Anything else still running inside our namespaces (dnsmasq, udhcpc) goes too.
        for name in self.namespaces:
            pids = sh("ip", "netns", "pids", name, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        for name in reversed(self.namespaces):
            sh("ip", "netns", "del", name, check=False)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(name in sh("ip", "netns", "list").stdout for name in self.namespaces):
            time.sleep(0.05)
