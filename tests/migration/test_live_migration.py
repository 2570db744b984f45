"""Live migration of real QEMU guests between two nodes, each with its own libvirtd in its own network namespace
(tests/migration/hosts.py), over libvirt's TLS transport with the cloud's certificates, driven by the CC.

One cloud for the module (MANAGED-NOVLAN: the CC's router, DHCP, NAT and security groups; SSH from the `pub`
namespace to guests' public addresses) and one guest that moves back and forth: live (a counter on its console
never restarts, an SSH session survives, its public address answers, its console history comes along), then with
the CC killed -9 mid-migration, then with the target NC killed -9 mid-migration: each converges on one running
copy.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.messages.migration import (
    DescribeMigrationsRequest,
    DescribeMigrationsResponse,
    MigrateInstancesRequest,
    MigrateInstancesResponse,
    MigrationInfo,
    NodeMaintenance,
    NodeRequest,
)
from common.messages.storage import DescribeStorageRequest, DescribeStorageResponse, StorageVolume
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
# A memory checker in the guest: 8 MiB of tmpfs (guest RAM) rewritten and read back over and over, its result on the
# console. A page a migration left stale (QEMU 7.2 under TCG lost stores during live memory copies) shows as CORRUPT.
MEMCHECK = ("setsid sh -c 'n=0; while :; do n=$((n+1)); yes \"$n KOALA\" | head -c 8388608 > /tmp/m;"
            " md5sum /tmp/m > /tmp/m.md5; sleep 2; if md5sum -c -s /tmp/m.md5; then r=ok; else r=CORRUPT; fi;"
            " echo \"KOALA-MEMCHECK $n $r\" > /dev/console; done' </dev/null >/dev/null 2>&1 &")  # fmt: skip
HURT = re.compile(r"KOALA-MEMCHECK \d+ CORRUPT|Kernel panic|Oops:|general protection fault|Fatal exception|"
                  r"BUG: (unable to handle|kernel NULL)")  # fmt: skip


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
        world.ssh(ids[0], MEMCHECK)
        wait_for(lambda: "KOALA-MEMCHECK 1 " in world.console(ids[0]), 60, 0.5, "the memory checker's first round")
        yield ids[0]
    finally:
        world.terminate(ids)


@pytest.fixture(autouse=True)
def guest_intact(world: MigrationWorld, guest: str) -> Iterator[None]:
    """After each test, however it moved the module's guest: it runs in one copy, on the node the CC names, its memory
    checker found nothing stale and its kernel did not oops (a guest corrupted by a migration fails the very test
    that corrupted it, not a later one that merely needs it to answer)."""
    yield
    wait_for(lambda: not any(m.state not in ("done", "failed") for m in migrations_of(world, guest)), 120, 0.3,
             f"the migrations of {guest} settled")  # fmt: skip
    text = world.console(guest)
    hurt = HURT.search(text)
    assert hurt is None, f"{hurt.group(0)} on the console of {guest}:\n{text[-4000:]}"
    assert "KOALA-MEMCHECK" in text  # the checker is still running (its lines are there to be read)
    running = [role for role in world.nodes if guest in domains(world, role)]
    assert running == [role_of(world, world.node_of(guest))], running


@pytest.fixture
def in_service(world: MigrationWorld) -> Iterator[None]:
    """Both nodes back in service after the test, however it ended: a test that evacuates a node and fails before
    its own restore would leave the node under maintenance, and every later test's migration to it refused
    (NodeInMaintenance)."""
    yield
    for node in world.nodes.values():
        restored = world.cc("RestoreNode", NodeRequest(node=node.id), NodeMaintenance)
        assert restored.state == "enabled", restored


def counters(text: str) -> list[int]:
    return [int(n) for n in COUNTER.findall(text)]


def migrate(world: MigrationWorld, instance_id: str, target: str = "") -> MigrationInfo:
    request = MigrateInstancesRequest(instance_ids=[instance_id], target_node=target)
    answer = world.cc("MigrateInstances", request, MigrateInstancesResponse)
    assert not answer.errors, answer.errors
    return answer.migrations[0]


def migrations_of(world: MigrationWorld, instance_id: str) -> list[MigrationInfo]:
    answer = world.cc("DescribeMigrations", DescribeMigrationsRequest(instance_ids=[instance_id]),
                      DescribeMigrationsResponse)  # fmt: skip
    return answer.migrations


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


def migrate_to_the_other_node(world: MigrationWorld, guest: str) -> tuple[str, str]:
    """Start a live migration of the guest to the other node and wait until libvirt copies it; (source, target)."""
    source = role_of(world, world.node_of(guest))
    target = "b" if source == "a" else "a"
    migrate(world, guest, world.nodes[target].id)
    under_way = wait_for(lambda: (m := migration(world, guest)).state in ("migrating", "failed", "done") and m, 60,
                         0.05, "the migration under way")  # fmt: skip
    assert under_way.state == "migrating", under_way
    return source, target


def assert_counting_on(world: MigrationWorld, guest: str) -> None:
    """The console's counter never restarted nor skipped: the same boot went on."""
    counted = counters(world.console(guest))
    assert counted == list(range(counted[0], counted[0] + len(counted)))


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


def device_of(world: MigrationWorld, instance_id: str, volume_id: str) -> str:
    """The guest's disk whose serial is the volume id ('' when there is none)."""
    script = ('for d in /sys/block/vd*; do [ "$(cat $d/serial 2>/dev/null)" = "' + volume_id + '" ] && echo ${d##*/}; '
              "done; true")  # fmt: skip
    return world.ssh(instance_id, script).strip()


def storage_of(world: MigrationWorld, volume_id: str) -> StorageVolume:
    answer = world.cc("DescribeStorage", DescribeStorageRequest(volume_ids=[volume_id]), DescribeStorageResponse)
    return answer.volumes[0]


def admitted(world: MigrationWorld, volume_id: str) -> list[str]:
    """The initiator names the volume's iSCSI export admits (its ACL in the CC's tgtd)."""
    conf = world.cloud.aio.conf_path("cc").read_text()
    port = int(conf.split("KOALA_EBS_PORTAL=", 1)[1].split()[0].strip("'\"").rsplit(":", 1)[1])
    shown = subprocess.run(["tgtadm", "-C", str(port % 32768), "--lld", "iscsi", "--op", "show", "--mode", "target"],
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    names: list[str] = []
    for block in re.split(r"(?m)^Target \d+: ", shown):
        if block.split("\n", 1)[0].strip().endswith(f".{volume_id}") and "ACL information:" in block:
            names = [line.strip() for line in block.split("ACL information:", 1)[1].splitlines() if line.strip()]
    return names


def node_records(world: MigrationWorld, role: str, volume_id: str) -> list[tuple[str, str]]:
    """The NC's own attachment records of the volume: (instance id, guest device)."""
    with sqlite3.connect(f"file:{world.nodes[role].data_dir / 'nc.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT instance_id, target FROM volume_attachments WHERE volume_id = ?", (volume_id,))
        return [tuple(row) for row in rows]


def read_back(world: MigrationWorld, instance_id: str, device: str) -> str:
    """The volume's first line as the guest reads it from the disk (its page cache dropped first)."""
    return world.ssh(instance_id, f"sync; echo 3 > /proc/sys/vm/drop_caches; head -n 1 /dev/{device}").strip()


def test_migration_with_an_attached_volume(world: MigrationWorld, guest: str) -> None:
    """An EBS volume attached to the guest goes with it and is never copied: the target logs in to its iSCSI target
    with an initiator name of its own (admitted beside the source's while it moves), the guest reads on the target
    what it wrote on the source, the CC's attachment and the nodes' records follow it, and the source's initiator is
    no longer admitted; a failed migration leaves it on the source. Then back with the CC killed -9 mid-migration:
    one attachment, on one node; detach works."""
    ec2 = world.ec2
    volume = ec2.create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
    wait_for(lambda: ec2.describe_volumes(VolumeIds=[volume])["Volumes"][0]["State"] == "available", 60, 0.3,
             f"{volume} available")  # fmt: skip
    try:
        ec2.attach_volume(VolumeId=volume, InstanceId=guest, Device="/dev/sdf")
        device = wait_for(lambda: device_of(world, guest, volume), 60, 1.0, "the volume in the guest")
        source = role_of(world, world.node_of(guest))
        target = "b" if source == "a" else "a"
        before = admitted(world, volume)
        assert len(before) == 1 and storage_of(world, volume).attachment.node == world.nodes[source].url
        records = node_records(world, source, volume)  # (its libvirt target dev, not always the guest's name)
        assert len(records) == 1 and records[0][0] == guest and not node_records(world, target, volume)
        world.ssh(guest, f"echo KOALA-VOLUME-ON-{source} > /dev/{device}; sync")

        # A migration that fails (libvirt's job aborted mid-copy) leaves the attachment where it was: the target's
        # initiator no longer admitted, its record gone.
        migrate(world, guest, world.nodes[target].id)
        under_way = wait_for(lambda: (m := migration(world, guest)).state in ("migrating", "failed", "done") and m,
                             60, 0.05, "the migration under way")  # fmt: skip
        assert under_way.state == "migrating", under_way
        wait_for(lambda: world.hosts.hosts[source].virsh("domjobabort", guest, check=False).returncode == 0, 30, 0.1,
                 "libvirt's migration job aborted")  # fmt: skip
        assert wait_settled(world, guest).state == "failed"
        assert admitted(world, volume) == before
        assert storage_of(world, volume).attachment.node == world.nodes[source].url
        assert node_records(world, source, volume) == records and not node_records(world, target, volume)

        started = migrate(world, guest, world.nodes[target].id)
        done = wait_settled(world, guest)
        assert done.state == "done", done.error
        assert started.target_node == world.nodes[target].id == world.node_of(guest)
        assert guest in domains(world, target) and guest not in domains(world, source)
        # Not copied: the source sent the file disks only; the target logged in with its own initiator name.
        sent = next(line for line in world.nodes[source].log().splitlines()[::-1] if f"{guest}: migrating" in line)
        assert f"volumes ['{volume}']" in sent and f"'{device}'" not in sent.split("disks copied", 1)[1], sent
        after = admitted(world, volume)
        assert len(after) == 1 and after != before, (before, after)
        assert storage_of(world, volume).attachment.node == world.nodes[target].url
        assert node_records(world, target, volume) == records and not node_records(world, source, volume)
        assert device_of(world, guest, volume) == device
        assert read_back(world, guest, device) == f"KOALA-VOLUME-ON-{source}"
        # What the guest writes on the target lands in the volume itself (the CC's file behind the export).
        world.ssh(guest, f"echo KOALA-VOLUME-ON-{target} > /dev/{device}; sync")
        files = list((world.cloud.dir / "data").glob(f"*/volumes/{volume}.img"))
        assert len(files) == 1 and files[0].read_bytes()[:64].startswith(f"KOALA-VOLUME-ON-{target}".encode())

        # Back, with the CC killed -9 while libvirt copies: it resumes and settles on one attachment.
        migrate(world, guest, world.nodes[source].id)
        under_way = wait_for(lambda: (m := migration(world, guest)).state in ("migrating", "failed", "done") and m,
                             60, 0.05, "the migration under way")  # fmt: skip
        assert under_way.state == "migrating", under_way
        assert len(admitted(world, volume)) == 2  # both nodes' initiators while it moves
        world.cloud.kill("cc")
        world.cloud.start("cc")
        done = wait_settled(world, guest)
        assert done.state == "done", done.error
        assert guest in domains(world, source) and guest not in domains(world, target)
        wait_for(lambda: len(admitted(world, volume)) == 1, 30, 0.3, "one initiator admitted")
        assert admitted(world, volume) != after  # the target's initiator no longer admitted
        assert storage_of(world, volume).attachment.node == world.nodes[source].url
        assert node_records(world, source, volume) == records and not node_records(world, target, volume)
        assert read_back(world, guest, device) == f"KOALA-VOLUME-ON-{target}"

        # Detach works from the node the guest is on now: the disk leaves the guest and the export goes.
        ec2.detach_volume(VolumeId=volume)
        wait_for(lambda: ec2.describe_volumes(VolumeIds=[volume])["Volumes"][0]["State"] == "available", 90, 0.5,
                 f"{volume} detached")  # fmt: skip
        assert device_of(world, guest, volume) == ""
        assert not node_records(world, source, volume) and admitted(world, volume) == []
    finally:
        with contextlib.suppress(Exception):
            ec2.detach_volume(VolumeId=volume, Force=True)
        with contextlib.suppress(Exception):
            wait_for(lambda: ec2.describe_volumes(VolumeIds=[volume])["Volumes"][0]["State"] == "available", 60, 1)
            ec2.delete_volume(VolumeId=volume)


def test_cc_killed_mid_migration_converges(world: MigrationWorld, guest: str) -> None:
    source, target = migrate_to_the_other_node(world, guest)
    world.cloud.kill("cc")
    world.cloud.start("cc")
    done = wait_settled(world, guest)
    assert done.state == "done", done.error
    assert guest in domains(world, target) and guest not in domains(world, source)
    wait_for(lambda: world.node_of(guest) == world.nodes[target].id, 30, 0.3, "the CC's record on the target")
    assert world.ssh(guest, "echo alive").strip() == "alive"


def test_target_nc_killed_mid_migration_converges(world: MigrationWorld, guest: str) -> None:
    source, target = migrate_to_the_other_node(world, guest)
    world.nodes[target].kill()
    time.sleep(1)
    world.nodes[target].start()
    done = wait_settled(world, guest)
    # Its libvirtd went on receiving the guest, so the migration finished: one copy, on the target.
    assert done.state == "done", done.error
    assert guest in domains(world, target) and guest not in domains(world, source)
    assert world.node_of(guest) == world.nodes[target].id
    assert_counting_on(world, guest)


def test_source_nc_killed_mid_migration_converges(world: MigrationWorld, guest: str) -> None:
    """The source NC dies while libvirt copies: the restarted NC reads the outcome from the domain (gone: moved; here
    with a job: still going; here without one: failed, and it runs on here) and the CC settles on that."""
    source, target = migrate_to_the_other_node(world, guest)
    world.nodes[source].kill()
    time.sleep(1)
    world.nodes[source].start()
    done = wait_settled(world, guest)
    # libvirt ends a peer-to-peer migration whose client went away, so it usually fails and the guest stays; if it
    # had finished first, the guest is on the target. Either way: one running copy, where the CC says it is.
    where = target if done.state == "done" else source
    elsewhere = source if where == target else target
    assert done.state in ("done", "failed"), done
    assert guest in domains(world, where) and guest not in domains(world, elsewhere)
    assert world.node_of(guest) == world.nodes[where].id
    assert world.ssh(guest, "echo alive").strip() == "alive"
    assert_counting_on(world, guest)


def test_a_failed_migration_leaves_the_guest_on_the_source(world: MigrationWorld, guest: str) -> None:
    """libvirt's job aborted mid-copy (as an operator or a timeout would): the guest runs on where it was, the CC
    keeps it there, and the target's prepared copy is gone."""
    source, target = migrate_to_the_other_node(world, guest)
    wait_for(lambda: world.hosts.hosts[source].virsh("domjobabort", guest, check=False).returncode == 0, 30, 0.1,
             "libvirt's migration job aborted")  # fmt: skip
    done = wait_settled(world, guest)
    assert done.state == "failed" and done.error, done
    assert guest in domains(world, source) and guest not in domains(world, target)
    assert world.node_of(guest) == world.nodes[source].id
    target_dir = world.hosts.hosts[target].dir / "instances"
    wait_for(lambda: not any(target_dir.glob(f"*/{guest}")), 30, 0.3, "the target's prepared copy removed")
    assert world.ssh(guest, "echo still-here").strip() == "still-here"
    assert_counting_on(world, guest)


def koala_admin(world: MigrationWorld, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", "admin", "--state-dir", str(world.cloud.dir), *args],
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_cold_migration_fallback(world: MigrationWorld, guest: str) -> None:
    """`koala admin migrate --cold`: the guest is paused for the whole copy (stop, move, start) rather than copied
    while it runs; it goes on where it was on the other node (the console's counter does not restart)."""
    source = world.node_of(guest)
    before = counters(world.console(guest))
    done = koala_admin(world, "migrate", guest, "--cold", "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "done\t100%" in done.stdout
    assert world.node_of(guest) != source
    wait_for(lambda: max(counters(world.console(guest)), default=0) > max(before) + 2, 60, 0.5,
             "the counter going on after the cold migration")  # fmt: skip
    assert_counting_on(world, guest)
    assert any(f"{guest}: migrating (cold)" in node.log() for node in world.nodes.values())


@pytest.mark.usefixtures("in_service")
def test_evacuate_and_restore_a_node_with_three_guests(world: MigrationWorld, guest: str) -> None:
    """`koala admin evacuate NODE --wait` moves every guest off the node (live, each where the policy puts it) and
    keeps new ones away from it until `koala admin restore NODE`."""
    others = world.launch(2)
    try:
        node = role_of(world, world.node_of(guest))
        name = world.nodes[node].id
        for instance_id in others:  # gather the three on one node with `koala admin migrate --to`
            if world.node_of(instance_id) != name:
                done = koala_admin(world, "migrate", instance_id, "--to", name, "--wait")
                assert done.returncode == 0, done.stdout + done.stderr
                assert "done\t100%" in done.stdout
        three = [guest, *others]
        assert all(world.node_of(i) == name for i in three)
        evacuated = koala_admin(world, "evacuate", name, "--wait")
        assert evacuated.returncode == 0, evacuated.stdout + evacuated.stderr
        assert f"NODE\t{name}\tevacuated" in evacuated.stdout
        other = "b" if node == "a" else "a"
        assert all(world.node_of(i) == world.nodes[other].id for i in three)
        assert domains(world, node).isdisjoint(three) and set(three) <= domains(world, other)
        for instance_id in three:  # all three still answer on their public addresses
            assert world.ssh(instance_id, "echo up").strip() == "up"
        # Nothing is placed on a node under maintenance, even with room for it.
        extra = world.launch(1)
        try:
            assert world.node_of(extra[0]) == world.nodes[other].id
            # Nor may a guest be migrated there.
            refused = koala_admin(world, "migrate", extra[0], "--to", name)
            assert refused.returncode != 0 and "NodeInMaintenance" in refused.stderr
        finally:
            world.terminate(extra)
        restored = koala_admin(world, "restore", name)
        assert restored.returncode == 0 and f"NODE\t{name}\tenabled" in restored.stdout
        back = koala_admin(world, "migrate", others[0], "--to", name, "--wait")
        assert back.returncode == 0, back.stdout + back.stderr
        assert world.node_of(others[0]) == name
    finally:
        world.terminate(others)


@pytest.mark.usefixtures("in_service")
def test_admin_pages_migrate_with_progress_evacuate_and_restore(world: MigrationWorld, guest: str) -> None:
    """The clusters page: live-migrate from its form and watch the progress (the page reloads itself while a migration
    runs), then Evacuate the node the guest went to (it comes back) and Restore it; in Debian's headless Chromium."""
    from playwright import sync_api

    from tests.admin.conftest import open_page
    from tests.chromium import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    password = (world.cloud.dir / "data" / "clc" / "admin" / "web-password").read_text().strip()
    source = role_of(world, world.node_of(guest))
    target = "b" if source == "a" else "a"
    source_id, target_id = world.nodes[source].id, world.nodes[target].id
    with tempfile.TemporaryDirectory(prefix="koala-chromium-") as profile, sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, base_url=world.cloud.url("clc")
        )
        context.set_default_timeout(15000)
        try:
            page = open_page(context, password, "/admin/clusters")
            page.fill(".migrate input[name=instance_id]", guest)
            page.select_option(".migrate select[name=target]", target_id)
            page.click(".migrate button")
            assert f"Migrating {guest} from {source_id} to {target_id}." in page.inner_text(".flash")
            seen = watch_row(page, guest, source_id)
            assert "done" in seen[-1] and "100%" in seen[-1], seen
            assert world.node_of(guest) == target_id
            # The CLC's own record follows (its instances page filtered by node).
            for _ in range(60):
                page.goto(f"/admin/instances?node={target_id}")
                if guest in page.inner_text("main"):
                    break
                page.wait_for_timeout(500)
            else:
                raise AssertionError(f"the CLC does not show {guest} on {target_id}")
            page.goto("/admin/clusters")
            page.locator(".nodes tr", has_text=target_id).locator("button:has-text('Evacuate')").click()
            assert f"Node {target_id} is under maintenance: 1 instance moving off." in page.inner_text(".flash")
            seen = watch_row(page, guest, target_id)
            assert "done" in seen[-1], seen
            assert world.node_of(guest) == source_id
            page.goto("/admin/clusters")
            assert "evacuated" in page.locator(".nodes tr", has_text=target_id).inner_text()
            page.locator(".nodes tr", has_text=target_id).locator("button:has-text('Restore')").click()
            assert f"Node {target_id} is back in service." in page.inner_text(".flash")
            assert "Evacuate" in page.locator(".nodes tr", has_text=target_id).inner_text()
        finally:
            context.close()


def watch_row(page, instance_id: str, source_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    """The texts the migrations table showed for the instance's migration from `source_id`, until it settled (the
    page reloads itself every 2 s meanwhile)."""
    seen: list[str] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            rows = [r for r in page.locator(".migrations tr", has_text=instance_id).all_inner_texts()
                    if r.split("\t")[1:2] == [source_id]]  # fmt: skip
        except Exception:  # the page was reloading
            rows = []
        if rows and (not seen or seen[-1] != rows[0]):
            seen.append(rows[0])
        if rows and ("done" in rows[0] or "failed" in rows[0]):
            return seen
        page.wait_for_timeout(300)
    raise AssertionError(f"the migration did not settle on the page: {seen}")


def test_shared_instance_directory_is_not_copied(world: MigrationWorld, guest: str) -> None:
    """Shared storage: the guest's directory made one for both nodes (the target's path for it leads to the source's
    directory, as one instance path on a shared file system would). The target finds the marker the source wrote
    there, so nothing is copied, neither side makes or removes the files, and the console log goes on in one file;
    then back again the same way. (From here on this guest's migrations are shared ones: POWERSAVE's too.)"""
    source = role_of(world, world.node_of(guest))
    target = "b" if source == "a" else "a"
    source_dir = next((world.hosts.hosts[source].dir / "instances").glob(f"*/{guest}"))
    shared = world.hosts.hosts[target].dir / "instances" / source_dir.parent.name / guest
    shared.parent.mkdir(parents=True, exist_ok=True)
    shared.symlink_to(source_dir, target_is_directory=True)
    disk = (source_dir / "root.qcow2").stat()
    before = counters(world.console(guest))
    for there, back in ((target, source), (source, target)):
        done = wait_settled(world, migrate(world, guest, world.nodes[there].id).instance_id)
        assert done.state == "done", done.error
        assert world.node_of(guest) == world.nodes[there].id
        assert guest in domains(world, there) and guest not in domains(world, back)
        sent = next(line for line in world.nodes[back].log().splitlines()[::-1] if f"{guest}: migrating" in line)
        assert "disks copied [], shared storage" in sent, sent
        assert f"{guest}: Pending (migrating-in) from {world.nodes[back].id} (its directory is shared with it)" in (
            world.nodes[there].log()
        )
        wait_for(lambda b=back: f"{guest}: Teardown (left-shared)" in world.nodes[b].log(), 30, 0.3,
                 "the source let its copy go")  # fmt: skip
        # The one disk is still there, the very same file, and the guest writes on through it.
        assert (source_dir / "root.qcow2").stat().st_ino == disk.st_ino and shared.resolve() == source_dir
        assert world.ssh(guest, "echo shared > /root/shared.txt && sync && cat /root/shared.txt").strip() == "shared"
    counted = counters(world.console(guest))
    assert counted[: len(before)] == before and counted == list(range(counted[0], counted[0] + len(counted)))


def test_powersave_consolidates_so_that_a_node_sleeps(world: MigrationWorld, guest: str) -> None:
    """Under POWERSAVE the CC packs the two guests of two nodes onto one by live migration (after its hysteresis),
    and the node left empty is powered down by the power loop."""
    from common.messages.clc_cc import DescribeNodesResponse, NodeInfo, RegisterNodeRequest

    for index, node in enumerate(world.nodes.values(), start=1):  # a node is put to sleep only if it can be woken
        world.cc("RegisterNode", RegisterNodeRequest(node=node.url, mac=f"52:54:00:4b:00:0{index}"), NodeInfo)
    others = world.launch(1)
    conf = world.cloud.aio.conf_path("cc")
    original = conf.read_text()
    try:
        here = world.node_of(guest)
        if world.node_of(others[0]) == here:  # one guest on each node
            elsewhere = next(n.id for n in world.nodes.values() if n.id != here)
            moved = koala_admin(world, "migrate", others[0], "--to", elsewhere, "--wait")
            assert moved.returncode == 0, moved.stdout + moved.stderr
        assert world.node_of(guest) != world.node_of(others[0])
        conf.write_text(original + 'SCHEDPOLICY="POWERSAVE"\nKOALA_CONSOLIDATE_AFTER="3"\nPOWER_IDLETHRESH="4"\n')
        world.cloud.stop("cc")
        world.cloud.start("cc")
        together = wait_for(lambda: (n := world.node_of(guest)) == world.node_of(others[0]) and n, 180, 1.0,
                            "the two guests on one node")  # fmt: skip
        emptied = next(n.id for n in world.nodes.values() if n.id != together)

        def asleep() -> bool:
            nodes = world.cc("DescribeNodes", None, DescribeNodesResponse).nodes
            return any(n.node_id == emptied and n.state == "ASLEEP" for n in nodes)

        wait_for(asleep, 60, 0.5, f"{emptied} powered down")
        moves = world.cc("DescribeMigrations", DescribeMigrationsRequest(), DescribeMigrationsResponse).migrations
        assert any(m.target_node == together and m.state == "done" for m in moves)
        assert "consolidation: moving" in world.cloud.log("cc")
        for instance_id in (guest, others[0]):
            try:
                assert world.ssh(instance_id, "echo packed").strip() == "packed"
            except BaseException:
                print(world.console(instance_id)[-2000:])
                print(world.cloud.log("cc")[-4000:])
                raise
    finally:
        conf.write_text(original)
        world.cloud.stop("cc")
        world.cloud.start("cc")
        world.terminate(others)
