"""Apply a DesiredState: sysctls, devices and addresses, iptables chains, DHCP. Idempotent: each step reads
the live state first and changes only what differs, so applying the same state twice changes nothing."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.cluster_controller.network import dhcp, iptables, links
from services.cluster_controller.network.desired import DesiredState
from services.cluster_controller.network.runner import Runner

log = logging.getLogger("koala.cc.network")


@dataclass
class ApplyReport:
    sysctls: list[str] = field(default_factory=list)
    link_commands: list[list[str]] = field(default_factory=list)
    iptables_payload: str = ""
    dhcp: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.sysctls or self.link_commands or self.iptables_payload or self.dhcp)


class Applier:
    def __init__(self, runner: Runner, dhcp_server: dhcp.DhcpServer | None):
        self.runner = runner
        self.dhcp = dhcp_server

    @classmethod
    def for_directory(cls, runner: Runner, directory: Path, program: str = "dnsmasq", user: str = "root") -> Applier:
        return cls(runner, dhcp.DhcpServer(runner, directory, program, user))

    async def apply(self, desired: DesiredState) -> ApplyReport:
        started = time.perf_counter()
        report = ApplyReport()
        report.sysctls = await self._sysctls(desired.sysctls)
        live = links.parse_ip_json((await self.runner.run(["ip", "-j", "-d", "addr", "show"])).stdout)
        report.link_commands = links.plan(desired, live)
        for argv in report.link_commands:
            await self.runner.run(argv)
        report.iptables_payload = await self._iptables(desired)
        if self.dhcp is not None:
            report.dhcp = await self.dhcp.apply(desired.dhcp)
        report.seconds = time.perf_counter() - started
        if report.changed:
            log.info(
                "network applied in %.3f s: %d sysctls, %d ip commands, %d iptables lines, dhcp %s",
                report.seconds,
                len(report.sysctls),
                len(report.link_commands),
                report.iptables_payload.count("\n"),
                ",".join(report.dhcp) or "unchanged",
            )
        return report

    async def _sysctls(self, wanted: dict[str, str]) -> list[str]:
        if not wanted:
            return []
        keys = list(wanted)
        result = await self.runner.run(["sysctl", "-n", *keys], check=False)
        values = result.stdout.split("\n")
        done = []
        for index, key in enumerate(keys):
            current = values[index].strip() if index < len(values) else ""
            if current != wanted[key]:
                await self.runner.run(["sysctl", "-q", "-w", f"{key}={wanted[key]}"])
                done.append(key)
        return done

    async def _iptables(self, desired: DesiredState) -> str:
        saved = await self.runner.run(["iptables-save"])
        payload = iptables.plan(desired, iptables.parse_save(saved.stdout))
        if payload:
            await self.runner.run(["iptables-restore", "--noflush"], input=payload)
        return payload
