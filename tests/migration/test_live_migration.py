"""Live migration of real QEMU guests between two nodes, each with its own libvirtd in its own network namespace
(tests/migration/hosts.py), over libvirt's TLS transport with the cloud's certificates, driven by the CC.

One cloud for the module (MANAGED-NOVLAN: the CC's router, DHCP, NAT and security groups; SSH from the `pub`
namespace to guests' public addresses) and one guest that moves back and forth: live (a counter on its console
never restarts, an SSH session survives, its public address answers, its console history comes along), then with
the CC killed -9 mid-migration, then with the target NC killed -9 mid-migration: each converges on one running
copy.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from common.messages.migration import (
    DescribeMigrationsRequest,
    DescribeMigrationsResponse,
    MigrateInstancesRequest,
    MigrateInstancesResponse,
    MigrationInfo,
)
from tests.migration.world import SSH_STREAM, MigrationWorld, migration_world
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.netns,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("libvirtd") is None or shutil.which("qemu-system-x86_64") is None,
        reason="needs root, libvirtd and QEMU",
    ),
    pytest.mark.timeout(900),
]
NETS = ("10.246.0.0", "10.248.0", "10.247.0")  # apart from the acceptance and EBS tests'
COUNTER = re.compile(r"KOALA-COUNTER (\d+)")


@pytest.fixture(scope="module")
def world() -> Iterator[MigrationWorld]:
    # Migrations limited to 24 MiB/s: a few seconds each, time enough to kill a process in the middle of one.
    with migration_world(NETS, nc={"KOALA_NC_MIGRATION_BANDWIDTH": 24}) as built:
        yield built


@pytest.fixture(scope="module")
def guest(world: MigrationWorld) -> Iterator[str]:
    ids = world.launch(1)
    try:
        # A counter on the guest's serial console: a restart of the guest would start it again from 1.
        world.ssh(ids[0], "setsid sh -c 'i=0; while :; do i=$((i+1)); echo \"KOALA-COUNTER $i\" > /dev/console;"
                          " sleep 0.5; done' </dev/null >/dev/null 2>&1 &")  # fmt: skip
        wait_for(lambda: COUNTER.search(world.console(ids[0])), 30, 0.5, "the counter on the console")
        yield ids[0]
    finally:
        world.terminate(ids)


def counters(text: str) -> list[int]:
    return [int(n) for n in COUNTER.findall(text)]


def migrate(world: MigrationWorld, instance_id: str, target: str = "") -> MigrationInfo:
    request = MigrateInstancesRequest(instance_ids=[instance_id], target_node=target)
    answer = world.cc("MigrateInstances", request, MigrateInstancesResponse)
    assert not answer.errors, answer.errors
    return answer.migrations[0]


def migration(world: MigrationWorld, instance_id: str) -> MigrationInfo:
    answer = world.cc("DescribeMigrations", DescribeMigrationsRequest(instance_ids=[instance_id]),
                      DescribeMigrationsResponse)  # fmt: skip
    return answer.migrations[0]


def wait_settled(world: MigrationWorld, instance_id: str, timeout: float = 240) -> MigrationInfo:
    return wait_for(lambda: (m := migration(world, instance_id)).state in ("done", "failed") and m, timeout, 0.3,
                    f"the migration of {instance_id} to settle")  # fmt: skip


def domains(world: MigrationWorld, role: str) -> set[str]:
    return set(world.hosts.hosts[role].virsh("list", "--name").stdout.split())


def role_of(world: MigrationWorld, node_id: str) -> str:
    return next(role for role, node in world.nodes.items() if node.id == node_id)


def test_live_migration_keeps_the_guest_running(world: MigrationWorld, guest: str, tmp_path) -> None:
    source = role_of(world, world.node_of(guest))
    target = "b" if source == "a" else "a"
    assert guest in domains(world, source) and guest not in domains(world, target)
    stream_out = tmp_path / "ssh-stream.txt"
    stream = subprocess.Popen(
        ["ip", "netns", "exec", world.topology.ns("pub"), sys.executable, str(SSH_STREAM), world.public_ip(guest),
         str(world.key_file), "i=0; while :; do i=$((i+1)); echo $i; sleep 0.2; done", str(stream_out)],
    )  # fmt: skip
    try:
        wait_for(lambda: stream_out.exists() and stream_out.read_text().count("\n") > 10, 60, 0.3, "the SSH stream")
        before = counters(world.console(guest))
        started = migrate(world, guest)  # no target named: the placement policy picks the other node
        assert (started.source_node, started.target_node) == (world.nodes[source].id, world.nodes[target].id)
        done = wait_settled(world, guest)
        assert done.state == "done", done.error
        assert done.progress == 100
        # One running copy, on the target; the CC reports the new node (and the CLC follows its reports).
        assert guest in domains(world, target) and guest not in domains(world, source)
        assert world.node_of(guest) == world.nodes[target].id
        source_dir = world.hosts.hosts[source].dir / "instances"
        wait_for(lambda: not any(source_dir.glob(f"*/{guest}")), 30, 0.3, "the source's copy removed")
        # The counter on the console goes on from where it was, never from 1 again; the console's history from
        # the source came along (the numbers before the migration are still there, without a gap).
        wait_for(lambda: max(counters(world.console(guest)), default=0) > max(before) + 4, 60, 0.5,
                 "the counter going on after the migration")  # fmt: skip
        after = counters(world.console(guest))
        assert after[: len(before)] == before or set(before[-5:]) <= set(after)
        assert after == list(range(after[0], after[0] + len(after))), "the counter restarted or skipped"
        assert world.console(guest).count("KOALA-GUEST booted") <= 1
        # The SSH session that ran through the migration is still the same session, still counting.
        time.sleep(2)
        lines = stream_out.read_text().splitlines()
        assert not any("#broken" in line for line in lines), lines[-20:]
        numbers = [int(line.split()[1]) for line in lines if line.split()[1].isdigit()]
        assert numbers == list(range(1, len(numbers) + 1))
        assert numbers[-1] > 20
        # A new connection to the public address works: address, NAT and security group followed the guest.
        assert world.ssh(guest, "echo still-here").strip() == "still-here"
    finally:
        stream.kill()
        stream.wait()


def test_cc_killed_mid_migration_converges(world: MigrationWorld, guest: str) -> None:
    source = role_of(world, world.node_of(guest))
    target = "b" if source == "a" else "a"
    migrate(world, guest, world.nodes[target].id)
    under_way = wait_for(lambda: (m := migration(world, guest)).state in ("migrating", "failed", "done") and m, 60,
                         0.05, "the migration under way")  # fmt: skip
    assert under_way.state == "migrating", under_way
    world.cloud.kill("cc")
    world.cloud.start("cc")
    done = wait_settled(world, guest)
    assert done.state == "done", done.error
    assert guest in domains(world, target) and guest not in domains(world, source)
    wait_for(lambda: world.node_of(guest) == world.nodes[target].id, 30, 0.3, "the CC's record on the target")
    assert world.ssh(guest, "echo alive").strip() == "alive"


def test_target_nc_killed_mid_migration_converges(world: MigrationWorld, guest: str) -> None:
    source = role_of(world, world.node_of(guest))
    target = "b" if source == "a" else "a"
    migrate(world, guest, world.nodes[target].id)
    under_way = wait_for(lambda: (m := migration(world, guest)).state in ("migrating", "failed", "done") and m, 60,
                         0.05, "the migration under way")  # fmt: skip
    assert under_way.state == "migrating", under_way
    world.nodes[target].kill()
    time.sleep(1)
    world.nodes[target].start()
    done = wait_settled(world, guest)
    # Its libvirtd went on receiving the guest, so the migration finished: one copy, on the target.
    assert done.state == "done", done.error
    assert guest in domains(world, target) and guest not in domains(world, source)
    assert world.node_of(guest) == world.nodes[target].id
    counted = counters(world.console(guest))
    assert counted == list(range(counted[0], counted[0] + len(counted)))
