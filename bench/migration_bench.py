"""Live migration figures (issue 21), printed as JSON on stdout (progress on stderr), with a baseline measured in
the same run, on the same machine, between the same two libvirtds.

For a 256 MiB guest (c1.medium) moved between two nodes (tests/migration/world.py: two NCs, each with its own
libvirtd in its own network namespace, TLS between them with the cloud's certificates):

- `koala`: `MigrateInstances` on the CC until `DescribeMigrations` says done (the whole of Koala's work: the
  target's preparation, libvirt's live migration with the disks' top layers, the commit and the source's
  release), and libvirt's own time for the copy; downtime as ping loss from the user's side (ping every 10 ms
  from the `pub` namespace to the guest's public address: the longest gap between two replies), and libvirt's
  reported downtime.
- `baseline`: the same guest image and domain by hand, `virsh migrate --live --p2p --copy-storage-inc --tls` (the
  same transport, the target's disks made beforehand, as Koala's preparation does), between the same libvirtds;
  it borrows a suspended Koala instance's MAC, so it has the same address, NAT and security group to ping.
- Targets: Koala's migration time and downtime at most 1.2x the baseline's (medians over the rounds).
- `baseline_virsh_paused`: the same by hand without `--live` (the guest paused once its disks are copied, for the
  copy of its memory). On a TCG node with QEMU < 9.0 that is what Koala does, because QEMU's live memory copy
  loses guest stores there (services/node_controller/migration.py, TCG_LIVE_RAM_SAFE_SINCE); the live baseline then
  risks corrupting its guest, and the like-for-like comparison is with this one (`*_same_mode`).

    .venv/bin/python bench/migration_bench.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.messages.leases_admin import InstanceRef, InstanceStateResponse  # noqa: E402
from common.messages.migration import (  # noqa: E402
    DescribeMigrationsRequest,
    DescribeMigrationsResponse,
    MigrateInstancesRequest,
    MigrateInstancesResponse,
)
from tests.migration.hosts import LibvirtHost  # noqa: E402
from tests.migration.world import MigrationWorld, migration_world  # noqa: E402
from tests.waiting import wait_for  # noqa: E402

NETS = ("10.196.0.0", "10.198.0", "10.197.0")
PINGER = REPO / "tests" / "migration" / "pinger.py"
TARGET = 1.2


def log(message: str) -> None:
    print(f"[migration_bench] {message}", file=sys.stderr, flush=True)


class Pinger:
    """ICMP echo every 10 ms from the user's namespace (tests/migration/pinger.py); the longest gap between replies is
    the downtime seen."""

    def __init__(self, world: MigrationWorld, address: str):
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", world.topology.ns("pub"), sys.executable, str(PINGER), address, "0.01"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the pinger did not start")
        time.sleep(1.0)

    def stop(self) -> float:
        """Seconds of the longest silence (minus the 10 ms interval)."""
        time.sleep(1.0)
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=10)
        figures = json.loads(out.strip().splitlines()[-1])
        if figures["received"] < 2:
            raise RuntimeError("no ping replies: the guest is not reachable")
        return max(0.0, figures["max_gap_ms"] / 1000 - 0.01)


def koala_round(world: MigrationWorld, guest: str, address: str) -> dict[str, float]:
    pinger = Pinger(world, address)
    started = time.monotonic()
    answer = world.cc("MigrateInstances", MigrateInstancesRequest(instance_ids=[guest]), MigrateInstancesResponse)
    if answer.errors:
        raise RuntimeError(f"MigrateInstances: {answer.errors}")

    def settled():
        found = world.cc("DescribeMigrations", DescribeMigrationsRequest(instance_ids=[guest]),
                         DescribeMigrationsResponse).migrations[0]  # fmt: skip
        return found if found.state in ("done", "failed") else None

    done = wait_for(settled, 300, 0.02, "the migration")
    took = time.monotonic() - started
    if done.state != "done":
        raise RuntimeError(f"migration failed: {done.error}")
    gap = pinger.stop()
    return {"seconds": took, "libvirt_seconds": done.elapsed_ms / 1000, "downtime_ping_ms": gap * 1000,
            "downtime_libvirt_ms": done.downtime_ms}  # fmt: skip


def _instance_dir(world: MigrationWorld, instance_id: str) -> tuple[str, Path]:
    for role, host in world.hosts.hosts.items():
        found = list((host.dir / "instances").glob(f"*/{instance_id}"))
        if found:
            return role, found[0]
    raise RuntimeError(f"no directory of {instance_id} on either host")


def _cache_image(host: LibvirtHost) -> Path:
    images = sorted((host.dir / "instances" / ".cache").glob("emi-*/*.img"))
    if not images:
        raise RuntimeError(f"{host.name} has no cached machine image")
    return images[0]


class Baseline:
    """A domain made by hand from a suspended Koala instance's files and XML (its MAC, so its address)."""

    NAME = "koala-baseline"

    def __init__(self, world: MigrationWorld, lender: str):
        self.world = world
        role, directory = _instance_dir(world, lender)
        self.where = role
        root = ET.fromstring((directory / "libvirt.xml").read_text())
        for metadata in root.findall("metadata"):
            root.remove(metadata)
        root.find("name").text = self.NAME
        root.find("uuid").text = str(uuid.uuid4())
        self.dirs = {r: h.dir / "baseline" for r, h in world.hosts.hosts.items()}
        for path in self.dirs.values():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(mode=0o755)
        here = self.dirs[role]
        for name in ("root.qcow2", "ephemeral.qcow2", "swap.img", "config.iso"):
            if (directory / name).exists():
                subprocess.run(["cp", "--sparse=always", str(directory / name), str(here / name)], check=True)
        text = ET.tostring(root, encoding="unicode").replace(str(directory), str(here))
        (here / "domain.xml").write_text(text)
        self.disks = [d.find("target").get("dev") for d in root.findall("devices/disk")
                      if d.get("type") == "file" and d.find("readonly") is None]  # fmt: skip
        world.hosts.hosts[role].virsh("create", str(here / "domain.xml"))
        wait_for(lambda: "KOALA-GUEST ready" in (here / "console.log").read_text(errors="replace"), 300, 1.0,
                 "the baseline guest ready")  # fmt: skip

    def _prepare_target(self, role: str, source_xml: str, source_dir: Path) -> Path:
        """What Koala's PrepareMigration does, by hand: empty overlays on the target's cached image, swap, ISO."""
        host, there = self.world.hosts.hosts[role], self.dirs[role]
        for stale in there.glob("*"):
            stale.unlink()
        image = _cache_image(host)
        info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(source_dir / "root.qcow2")],
                                         check=True, capture_output=True, text=True).stdout)  # fmt: skip
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image),
                        str(there / "root.qcow2"), str(info["virtual-size"])], check=True)  # fmt: skip
        if (source_dir / "ephemeral.qcow2").exists():
            template = json.loads(subprocess.run(
                ["qemu-img", "info", "-U", "--output=json", str(source_dir / "ephemeral.qcow2")],
                check=True, capture_output=True, text=True).stdout)["backing-filename"]  # fmt: skip
            local = host.dir / "instances" / ".templates" / Path(template).name
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(local),
                            str(there / "ephemeral.qcow2")], check=True)  # fmt: skip
        for name in ("swap.img", "config.iso"):
            if (source_dir / name).exists():
                subprocess.run(["cp", "--sparse=always", str(source_dir / name), str(there / name)], check=True)
        root = ET.fromstring(source_xml)
        for disk in root.findall("devices/disk"):
            for backing in disk.findall("backingStore"):
                disk.remove(backing)
        (there / "dest.xml").write_text(ET.tostring(root, encoding="unicode").replace(str(source_dir), str(there)))
        return there / "dest.xml"

    def round(self, address: str, live: bool = True) -> dict[str, float]:
        source = self.world.hosts.hosts[self.where]
        other = "b" if self.where == "a" else "a"
        target = self.world.hosts.hosts[other]
        xml = source.virsh("dumpxml", "--migratable", self.NAME).stdout
        dest_xml = self._prepare_target(other, xml, self.dirs[self.where])
        assert source.tls is not None
        pinger = Pinger(self.world, address)
        started = time.monotonic()
        source.virsh("migrate", *(["--live"] if live else []), "--p2p", "--copy-storage-inc", "--tls", "--xml",
                     str(dest_xml),
                     "--migrateuri", f"tcp://{target.address}", "--migrate-disks", ",".join(self.disks),
                     self.NAME, f"{target.tls_uri}?pkipath={source.tls.client}")  # fmt: skip
        took = time.monotonic() - started
        gap = pinger.stop()
        info = target.virsh("domjobinfo", "--completed", self.NAME).stdout
        elapsed = re.search(r"Time elapsed:\s+(\d+)", info)
        downtime = re.search(r"Total downtime:\s+(\d+)", info)
        self.where = other
        return {
            "seconds": took,
            "libvirt_seconds": int(elapsed.group(1)) / 1000 if elapsed else 0.0,
            "downtime_ping_ms": gap * 1000,
            "downtime_libvirt_ms": int(downtime.group(1)) if downtime else 0,
        }

    def close(self) -> None:
        for host in self.world.hosts.hosts.values():
            host.virsh("destroy", self.NAME, check=False)


def _answers(world: MigrationWorld, address: str) -> bool:
    pinger = Pinger(world, address)
    try:
        return pinger.stop() < 1.0
    except RuntimeError:
        return False


def summary(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in rounds), 3) for key in rounds[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with migration_world(NETS) as world:
        log("launching the guest and the baseline's address lender (c1.medium, 256 MiB)")
        guest, lender = world.launch(2)
        address = world.public_ip(guest)
        wait_for(lambda: world.ssh(guest, "echo ok").strip() == "ok", 120, 1.0, "SSH to the guest")
        koala = []
        for index in range(args.rounds):
            koala.append(koala_round(world, guest, address))
            log(f"koala round {index + 1}: {koala[-1]}")
        memory_paused = any("memory copied paused" in node.log() for node in world.nodes.values())
        log(f"suspending {lender}: its MAC and address go to the baseline guest")
        suspended = world_call(world, "SuspendInstance", InstanceRef(instance_id=lender), InstanceStateResponse)
        log(f"{lender}: {suspended.state}")
        baseline_address = world.public_ip(lender)
        baseline = Baseline(world, lender)
        try:
            wait_for(lambda: _answers(world, baseline_address), 120, 1.0, "the baseline guest answering ping")
            by_hand, by_hand_paused = [], []
            for index in range(args.rounds):
                by_hand.append(baseline.round(baseline_address))
                log(f"baseline round {index + 1}: {by_hand[-1]}")
            for index in range(args.rounds):
                by_hand_paused.append(baseline.round(baseline_address, live=False))
                log(f"baseline (memory copied paused) round {index + 1}: {by_hand_paused[-1]}")
        finally:
            baseline.close()
        world.terminate([guest, lender])
    ours, theirs, paused = summary(koala), summary(by_hand), summary(by_hand_paused)
    time_ratio = ours["seconds"] / theirs["seconds"]
    downtime_ratio = ours["downtime_ping_ms"] / max(theirs["downtime_ping_ms"], 1.0)
    time_same = ours["seconds"] / paused["seconds"]
    downtime_same = ours["downtime_ping_ms"] / max(paused["downtime_ping_ms"], 1.0)
    result = {
        "guest": {"vm_type": "c1.medium", "memory_mib": 256},
        "rounds": args.rounds,
        "koala": {"median": ours, "rounds": koala},
        "baseline_virsh": {"median": theirs, "rounds": by_hand},
        "baseline_virsh_paused": {"median": paused, "rounds": by_hand_paused},
        "koala_memory_copied_paused": memory_paused,
        "time_ratio": round(time_ratio, 3),
        "downtime_ratio": round(downtime_ratio, 3),
        "time_ratio_same_mode": round(time_same, 3),
        "downtime_ratio_same_mode": round(downtime_same, 3),
        "target_ratio": TARGET,
        "met": time_ratio <= TARGET and downtime_ratio <= TARGET,
        "met_same_mode": time_same <= TARGET and downtime_same <= TARGET,
    }
    print(json.dumps(result, indent=2))
    return 0


def world_call(world: MigrationWorld, op: str, body, model):
    """A signed call to the CLC as the cloud administrator."""
    import asyncio

    async def call():
        client = world.cloud.admin_client()
        try:
            return await client.call(world.cloud.url("clc"), op, body, model, timeout=60)
        finally:
            await client.close()

    return asyncio.run(call())


if __name__ == "__main__":
    sys.exit(main())
