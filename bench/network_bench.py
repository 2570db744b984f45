"""Cluster networking figures (issue 8), printed as JSON.

Inside a network namespace of its own (the host's rules are never touched), a MANAGED-NOVLAN router with
1,000 instances in 250 security groups, every instance with an elastic IP, each group with ingress rules by
CIDR and by source group:

1. full_apply: the CC's network manager applies the whole state from nothing (router addresses, 1,000 elastic
   IPs, every chain, DHCP with 1,000 host entries): target at most 1 s. Repeated on fresh namespaces.
2. reapply: the same state again (reads only, nothing changes).
3. rule_change: one group's rule set changed with ConfigureNetwork's path, until the new rule is in the
   kernel: target at most 100 ms.
Same-run baselines: `iptables-restore` of the same rules alone (the kernel's and the tool's own cost, no
planning, no reads, no addresses) and Eucalyptus's way, one `iptables` process per rule (measured on 200
rules and scaled to the rule count).

    .venv/bin/python bench/network_bench.py [--instances 1000] [--groups 250] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.messages.cc_nc import NetConfig
from common.messages.network import NetworkRule
from services.cluster_controller.network import iptables
from services.cluster_controller.network.manager import NetworkManager
from services.cluster_controller.network.settings import VnetSettings


def sh(*argv: str, input: str | None = None) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, input=input)


def make_ns() -> str:
    name = "kbench-" + secrets.token_hex(3)
    sh("ip", "netns", "add", name)
    sh("ip", "link", "add", "pub0", "netns", name, "type", "veth", "peer", "name", "pubx", "netns", name)
    sh("ip", "link", "add", "priv0", "netns", name, "type", "veth", "peer", "name", "privx", "netns", name)
    for dev in ("pub0", "pubx", "priv0", "privx"):
        sh("ip", "netns", "exec", name, "ip", "link", "set", dev, "up")
    sh("ip", "netns", "exec", name, "ip", "addr", "add", "172.16.255.254/16", "dev", "pub0")
    return name


def drop_ns(name: str) -> None:
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def settings(ns: str) -> VnetSettings:
    return VnetSettings(
        VNET_MODE="MANAGED-NOVLAN",
        VNET_SUBNET="10.128.0.0",
        VNET_NETMASK="255.255.0.0",
        VNET_ADDRSPERNET=32,
        VNET_PUBINTERFACE="pub0",
        VNET_PRIVINTERFACE="priv0",
        VNET_PUBLICIPS="172.16.0.0/20",
        VNET_CLOUDIP="172.16.255.1",
        KOALA_VNET_NETNS=ns,
        KOALA_VNET_RECONCILE_SECONDS=3600,
    )


def group_rules(index: int, groups: int, extra: int = 0) -> list[NetworkRule]:
    previous = f"000000000000-g{(index - 1) % groups}"
    rules = [
        NetworkRule(protocol="tcp", from_port=22, to_port=22, cidrs=["0.0.0.0/0"]),
        NetworkRule(protocol="tcp", from_port=80, to_port=80, cidrs=["172.16.0.0/12", "192.0.2.0/24"]),
        NetworkRule(protocol="tcp", from_port=5432, to_port=5432, source_networks=[previous]),
        NetworkRule(protocol="icmp", from_port=8, to_port=-1, cidrs=["0.0.0.0/0"]),
    ]
    if extra:
        rules.append(NetworkRule(protocol="tcp", from_port=extra, to_port=extra, cidrs=["198.51.100.0/24"]))
    return rules


async def populate(manager: NetworkManager, instances: int, groups: int) -> None:
    """Load the whole state into the manager without applying (as the database would on a restart)."""
    from services.cluster_controller.network.desired import InstanceEntry, NetworkSpec

    await manager.open()
    for g in range(groups):
        name = f"000000000000-g{g}"
        manager.networks[name] = NetworkSpec(name, 10 + g, tuple(group_rules(g, groups)))
    pool = [str(ip) for ip in manager.settings.public_ips()]
    for i in range(instances):
        g = i % groups
        instance_id = f"i-{i + 1:08x}"
        net = manager.fill_net(instance_id, NetConfig(vlan=10 + g, network_index=2 + i // groups))
        manager.instances[instance_id] = InstanceEntry(instance_id, net.private_mac, net.private_ip, net.vlan)
        manager.addresses[pool[i]] = (net.private_ip, instance_id)


def timed_restore(ns: str, payload: str) -> float:
    started = time.perf_counter()
    sh("ip", "netns", "exec", ns, "iptables-restore", "--noflush", input=payload)
    return time.perf_counter() - started


def one_by_one(ns: str, payload: str, sample: int) -> tuple[float, int]:
    """Eucalyptus's way: one iptables process per rule; `sample` rules timed, the per-rule cost returned."""
    lines = payload.splitlines()
    table = "filter"
    chains, rules = [], []
    for line in lines:
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            chains.append((table, line[1:].split()[0]))
        elif line.startswith(("-A ", "-I ")):
            rules.append((table, line))
    for t, chain in chains:
        sh("ip", "netns", "exec", ns, "iptables", "-t", t, "-N", chain)
    started = time.perf_counter()
    for t, line in rules[:sample]:
        sh("ip", "netns", "exec", ns, "iptables", "-t", t, *line.split())
    per_rule = (time.perf_counter() - started) / min(sample, len(rules))
    return per_rule, len(rules)


async def run(instances: int, groups: int, repeat: int) -> dict:
    full_times, reapply_times, change_times, restore_times = [], [], [], []
    report: dict = {"instances": instances, "groups": groups, "elastic_ips": instances}
    for round_ in range(repeat):
        ns = make_ns()
        work = Path(tempfile.mkdtemp(prefix="kbench-"))
        manager = NetworkManager(settings(ns), work)
        try:
            await populate(manager, instances, groups)
            started = time.perf_counter()
            full = await manager.converge()
            full_times.append(time.perf_counter() - started)
            assert full is not None and full.changed
            if round_ == 0:
                desired = manager.desired()
                payload = iptables.render_full(desired)
                report["rules"] = sum(len(r) for r in desired.chains.values())
                report["chains"] = len(desired.chains)
                report["address_commands"] = len(full.link_commands)
                report["dhcp_hosts"] = len(desired.dhcp.hosts) if desired.dhcp else 0
            started = time.perf_counter()
            again = await manager.converge()
            reapply_times.append(time.perf_counter() - started)
            assert again is not None and not again.changed
            for k in range(5):  # one rule change, until it is in the kernel
                g = (round_ * 5 + k) % groups
                started = time.perf_counter()
                await manager.configure_network(f"000000000000-g{g}", 10 + g, group_rules(g, groups, extra=7000 + k))
                change_times.append(time.perf_counter() - started)
                assert manager.last_report is not None and f"--dport {7000 + k}" in manager.last_report.iptables_payload
            live = (await manager.runner.run(["iptables-save", "-t", "filter"])).stdout
            assert f"--dport {7000 + 4}" in live  # the last change is in the kernel
            await manager.teardown()
        finally:
            await manager.stop()
            drop_ns(ns)
        # Baseline 1: the same rules through iptables-restore alone, into a fresh namespace.
        ns = make_ns()
        try:
            restore_times.append(timed_restore(ns, payload))
        finally:
            drop_ns(ns)
    # Baseline 2: one iptables process per rule.
    ns = make_ns()
    try:
        per_rule, rule_count = one_by_one(ns, payload, 200)
    finally:
        drop_ns(ns)
    full_s, restore_s = statistics.median(full_times), statistics.median(restore_times)
    change_ms = statistics.median(change_times) * 1e3
    report.update(
        {
            "full_apply_s": round(full_s, 3),
            "full_apply_runs_s": [round(t, 3) for t in full_times],
            "full_apply_target_s": 1.0,
            "full_apply_ok": max(full_times) <= 1.0,
            "reapply_unchanged_s": round(statistics.median(reapply_times), 3),
            "rule_change_ms": round(change_ms, 1),
            "rule_change_max_ms": round(max(change_times) * 1e3, 1),
            "rule_change_target_ms": 100,
            "rule_change_ok": max(change_times) * 1e3 <= 100,
            "baseline_iptables_restore_only_s": round(restore_s, 3),
            "full_apply_vs_restore_only": round(full_s / restore_s, 2),
            "baseline_one_iptables_per_rule_s": round(per_rule * rule_count, 2),
            "one_per_rule_vs_full_apply": round(per_rule * rule_count / full_s, 1),
        }
    )
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--groups", type=int, default=250)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print(json.dumps({"error": "needs root (network namespaces)"}))
        return 2
    print(json.dumps(asyncio.run(run(args.instances, args.groups, args.repeat)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
