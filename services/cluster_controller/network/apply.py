"""Apply a DesiredState: sysctls, devices and addresses, iptables chains, DHCP. Idempotent: each step reads
the live state first and changes only what differs, so applying the same state twice changes nothing."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from common.hostcmd import Runner
from services.cluster_controller.network import dhcp, iptables, links
from services.cluster_controller.network.desired import DesiredState

log = logging.getLogger("koala.cc.network")
ALL_PARTS = frozenset({"sysctl", "links", "iptables", "dhcp"})
RULES_ONLY = frozenset({"iptables"})


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
        # Koala's chains as last read or written. A rules-only change plans against it instead of reading the
        # whole ruleset again (`iptables-save` of 5,000 rules costs 30 ms); every full apply reads the kernel.
        self._rules_view: dict[str, iptables.TableState] | None = None

    async def apply(self, desired: DesiredState, parts: frozenset[str] = ALL_PARTS) -> ApplyReport:
        """Bring the live network to `desired`. `parts` limits the work to what a change can affect (a rule
        change touches only iptables); the reconcile loop always applies everything."""
        started = time.perf_counter()
        report = ApplyReport()
        rules_only = parts == frozenset({"iptables"}) and self._rules_view is not None
        # The reads are independent: run them at once.
        reads = await asyncio.gather(
            self._read_sysctls(desired.sysctls) if "sysctl" in parts else _none(),
            self.runner.run(["ip", "-j", "-d", "addr", "show"]) if "links" in parts else _none(),
            self.runner.run(["iptables-save"]) if "iptables" in parts and not rules_only else _none(),
        )
        sysctl_values, ip_json, saved = reads
        if sysctl_values is not None:
            report.sysctls = await self._sysctls(desired.sysctls, sysctl_values)
        if ip_json is not None:
            report.link_commands = links.plan(desired, links.parse_ip_json(ip_json.stdout))
        if report.link_commands:  # one `ip -batch` process for all of them (1,000 addresses: one fork, not 1,000)
            batch = "".join(" ".join(argv[1:]) + "\n" for argv in report.link_commands)
            await self.runner.run(["ip", "-batch", "-"], input=batch)
        if "iptables" in parts:
            current = iptables.parse_save(saved.stdout) if saved is not None else self._rules_view
            report.iptables_payload = iptables.plan(desired, current or {})
            if report.iptables_payload:
                self._rules_view = None  # unknown until the restore succeeded
                await self.runner.run(["iptables-restore", "--noflush"], input=report.iptables_payload)
            self._rules_view = iptables.applied_view(desired)
        if self.dhcp is not None and "dhcp" in parts:
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

    async def _read_sysctls(self, wanted: dict[str, str]) -> list[str] | None:
        if not wanted:
            return None
        result = await self.runner.run(["sysctl", "-n", *wanted], check=False)
        return result.stdout.split("\n")

    async def _sysctls(self, wanted: dict[str, str], values: list[str]) -> list[str]:
        done = []
        for index, key in enumerate(wanted):
            current = values[index].strip() if index < len(values) else ""
            if current != wanted[key]:
                await self.runner.run(["sysctl", "-q", "-w", f"{key}={wanted[key]}"])
                done.append(key)
        return done


async def _none() -> None:
    return None
