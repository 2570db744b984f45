"""EBS figures (issue 17), printed as JSON on stdout (progress on stderr). Every figure has a baseline measured in
the same run, on the same machine load.

1. `guest_io`: sequential write then read of the whole 1 GiB (dd, 1 MiB blocks) inside a QEMU guest on an attached
   volume (the CC's tgtd -> QEMU's iSCSI initiator), against the same guest on a local raw file disk of the same
   size hot-plugged by hand (`virsh attach-disk`, cache=none like the volume), alternating, median of --io-repeat
   rounds; also against a second local disk with the volume's own virtio queue size (`*_same_queue`), so the
   volume's front-end setting is not what makes the difference. Two patterns: `direct` (O_DIRECT in the guest: one
   1 MiB block at a time, which the guest splits into requests of at most its disk's max_segments) and `buffered`
   (the guest's page cache, as a file copy: the write ends with an fsync, the read starts with the guest's cache
   dropped). Target: >= 0.8x.
2. `snapshot`: a 1 GiB volume filled with random data (incompressible: the worst case for compression), its first
   (full) snapshot, then 10 % of its chunks rewritten and a second (incremental) snapshot; target: the second at
   least 5x faster. The zone's volumes are where `koala up` puts them: this machine's / is ext4 (no reflinks), so
   the CC makes and loop-mounts its own XFS image with reflinks (KOALA_EBS_XFS_IMAGE_GB, storage/volume_fs.py)
   and the second snapshot reads only the chunks whose extents moved (storage/extents.py); `--ext4` keeps the
   volumes on ext4 itself instead, where every snapshot reads the whole volume. Baseline for the full one: by hand,
   `qemu-img convert -c -O qcow2` of the volume file and an S3 upload of the result to Walrus with boto3
   (multipart); target: Koala's full snapshot at >= 0.8x its throughput.
3. `api`: CreateVolume -> available and AttachVolume -> attached (to the running guest, the disk hot-plugged)
   as seen by DescribeVolumes, p50 over N rounds; target under 1 s. Baseline: the same export and hot-plug by hand
   (tgtadm new target + LUN + ACL on the CC's tgtd, `virsh attach-device` of the same disk XML).

What bounds the volume, and what was done (sessions 7 and 8): QEMU's initiator (libiscsi) logs in with
MaxBurstLength and FirstBurstLength 256 KiB and MaxOutstandingR2T 1 whatever tgtd offers (LIBISCSI_DEBUG=10 shows
the login: tgtd's 16 MiB bursts and 8 R2Ts come back as 256 KiB and 1), and QEMU has no option for them; so a
request over 256 KiB is 256 KiB of immediate data then R2T round trips one after another. The NC therefore gives a
volume's virtio-blk a queue of 64 (domain.py ISCSI_QUEUE_SIZE): QEMU offers the guest 62 segments per request, and
the guest's requests stay within the immediate data. And the CC's XFS image is loop-mounted with direct I/O
(volume_fs.py): otherwise tgtd's writes are cached twice (XFS's page cache, then the image file's) and the guest's
final flush pushes the whole volume through both. Tried in the guest and left out: an iothread, cache=writeback,
tgtd's `--bsoflags direct` (no better, within noise); tgtd's `--bstype aio` measured well but answers
SYNCHRONIZE_CACHE without syncing anything (tgt's bs_aio skips it), so a guest's fsync would not be durable:
not a fair comparison with a local cache=none disk, and not acceptable for a volume. The local disk with the same
queue of 64 measured 0.9-1.3x the default one (noisy), so both are measured: `*_same_queue` is against it.
Session 8, two runs (write/read ratios): `direct` 0.95/0.99 and 1.09/1.27 (same queue 0.86/0.91, 0.89/1.24);
`buffered` 0.78/1.02 and 0.75/0.79 (same queue 0.81/0.94, 0.67/0.77). The buffered write stays under 0.8x;
not yet verified why: a likely cause is its final fsync writing what tgtd left in XFS's page cache, where the local
cache=none disk wrote as it went. `--bsoflags direct` on the LUN (with the queue of 64 and the direct loop device),
measured by hand once: buffered write 0.86x but the O_DIRECT read fell to 0.60x (no page cache under tgtd), so no.
Session 9, where the buffered write's time goes (1 GiB, the same guest, by hand, alternating with the local disk;
host CPU from /proc/PID/task, the guest's from its /proc/stat and /sys/block/X/stat): the guest runs on TCG, and
its two vCPU threads spend 6.2-6.9 CPU-s per GiB on either disk (dd's page-cache copies, emulated); the volume's
path adds about 0.6 CPU-s of the host's (tgtd 0.4, QEMU's main loop 0.3 against 0.1) on the same two cores, where
the local disk's O_DIRECT adds next to none. The guest's idle+iowait during the write was 150-215 ticks (HZ 100,
of 1000-1400) on the volume against 60-190 on the local disk; the final flush took 350-450 ms on the volume
(tgtd's fdatasync writing what XFS still held) against 1 ms. Tried and left out, none a measured gain: writeback
started early on the loop device (its bdi max_bytes at 64 MiB): the flush fell to 50-200 ms but the write as a
whole did not get faster (6 pairs each: median ratio 0.82 without, 0.77 with), the idle time moved rather than
went; tgtd at nice -10 (5 pairs: 0.68 at nice 0, 0.76 at -10, within the noise); a volume with the default queue
(1 MiB requests, R2Ts), 4 pairs in a quiet spell: 0.80-0.94 against 0.76-0.87 with the queue of 64, tgtd's CPU
0.25-0.37 s against 0.40-0.45 s: a small gain, while the queue of 64 is what the O_DIRECT pattern needs. TCP on
loopback lost nothing (7 tail-loss probes per GiB, all spurious). One round's ratio swung from 0.35 to 1.4 with the
machine's other work, 0.76-0.94 in quiet spells: what is left is the host CPU the iSCSI path takes from a CPU-bound
guest.
Session 9's bench run (`--skip-snapshot --skip-api`, 3 rounds, other engineers' guests booting meanwhile):
`buffered` write/read 1.00/0.80 (same queue 1.06/0.66; rounds of the volume's write 223/184/176 MiB/s against
159/183/277 on the local disk; write_idle_share 0.175 against 0.106, final flush 303 ms against 1 ms); `direct`
0.84/0.84 (same queue 0.81/0.92). The buffered write met 0.8x in this run and missed it in session 8's two; the
rounds' spread is wider than the margin, so a single run does not settle it either way.
Session 10, quiet machine, the whole bench twice (`--io-repeat 5`): `direct` write/read 0.96/1.06 and 0.99/1.13
(same queue 0.83/0.94, 0.91/1.10); `buffered` 0.82/0.95 and 0.76/1.02 (same queue 0.81/0.95, 0.80/1.07); snapshots
6.1x incremental over full (4.4 s -> 0.7 s, 3.9 -> 0.64), the full one 5.6x the by-hand convert and upload;
CreateVolume -> available 7-8 ms, AttachVolume -> attached 29-33 ms p50. Three LUN settings tried by hand
(tgtd's `--bsoflags`, 5 alternated rounds each), none better overall: volumes on ext4 without the XFS image,
buffered 0.83/0.93 (flush 430 ms: the same deferred write-out); `direct` on ext4, buffered 0.88/0.92 (flush 1 ms)
but the O_DIRECT read 0.62 (every read from the disk, as the local cache=none disk, but through the iSCSI hop);
`sync`, buffered 0.86/0.93 but the O_DIRECT write 0.61 (each write waits for the disk). The host's page cache under
tgtd is what keeps the O_DIRECT pattern at ~1x and what leaves the buffered write's last ~0.4 s to its flush.

The cloud is the acceptance test's world (tests/acceptance/world.py): the four services, the NC on qemu:///system,
SSH into the guest from the `pub` namespace. Needs root and libvirtd with QEMU (deploy/bootstrap.sh); everything
made here is removed at the end.

    .venv/bin/python bench/ebs_bench.py [--rounds 10] [--io-mib 1024] [--io-patterns direct,buffered] [--skip-...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402

MIB = 1 << 20
SSH_PROBE = REPO / "tests" / "acceptance" / "ssh_probe.py"


def log(message: str) -> None:
    print(f"[ebs_bench] {message}", file=sys.stderr, flush=True)


def wait(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out: {what}")
        time.sleep(interval)


class Bench:
    def __init__(self, world, work: Path, volumes: Path | None):
        self.world, self.cloud, self.work = world, world.cloud, work
        self.volumes = volumes  # KOALA_EBS_DIR, when not the CC's default
        rc = self.cloud.admin_credentials()
        self.rc = rc
        self.ec2 = boto3.client("ec2", endpoint_url=rc["EC2_URL"], region_name="eucalyptus",
                                aws_access_key_id=rc["EC2_ACCESS_KEY"], aws_secret_access_key=rc["EC2_SECRET_KEY"],
                                config=Config(retries={"max_attempts": 1}))  # fmt: skip
        conf = self.cloud.aio.conf_path("cc").read_text()
        self.portal = conf.split("KOALA_EBS_PORTAL=", 1)[1].split()[0].strip("'\"")
        self.control = str(int(self.portal.rsplit(":", 1)[1]) % 32768)
        self.instance = ""
        self.address = ""
        self.key_file = work / "bench.pem"

    # --- the guest ----------------------------------------------------------------------------------------
    def boot(self) -> None:
        from cli.guest_image import ensure_registered

        images = ensure_registered(self.cloud.dir, self.cloud.aio.admin_eucarc_source(), log=lambda _: None)
        self.key_file.write_text(self.ec2.create_key_pair(KeyName="bench")["KeyMaterial"])
        self.key_file.chmod(0o600)
        self.ec2.create_security_group(GroupName="ssh", Description="ssh")
        self.ec2.authorize_security_group_ingress(GroupName="ssh", IpProtocol="tcp", FromPort=22, ToPort=22,
                                                  CidrIp="0.0.0.0/0")  # fmt: skip
        answer = self.ec2.run_instances(ImageId=images["machine"], MinCount=1, MaxCount=1, KeyName="bench",
                                        SecurityGroups=["ssh"], InstanceType="m1.large")  # fmt: skip
        self.instance = answer["Instances"][0]["InstanceId"]

        def ready() -> bool:
            output = self.ec2.get_console_output(InstanceId=self.instance).get("Output", "") or ""
            return f"KOALA-GUEST ready instance={self.instance}" in output

        wait(ready, 300, "the guest ready", 1.0)
        found = self.ec2.describe_instances(InstanceIds=[self.instance])["Reservations"][0]["Instances"][0]
        self.address = found["PublicIpAddress"]
        log(f"guest {self.instance} at {self.address}")

    def ssh(self, command: str) -> str:
        done = self.world.topology.run("pub", sys.executable, str(SSH_PROBE), self.address, str(self.key_file),
                                       command, check=False)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"ssh {command!r}: {done.stdout}{done.stderr}")
        return done.stdout

    def device_by_serial(self, serial: str) -> str:
        script = (f'for d in /sys/block/vd*; do [ "$(cat $d/serial 2>/dev/null)" = "{serial}" ] && echo ${{d##*/}}; '
                  "done; true")  # fmt: skip
        return self.ssh(script).strip()

    def wait_volume(self, volume_id: str, state: str, attach: str | None = None) -> None:
        def check() -> bool:
            volume = self.ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
            attached = volume["Attachments"][0]["State"] if volume["Attachments"] else None
            return volume["State"] == state and (attach is None or attached == attach)

        wait(check, 120, f"{volume_id} {state} {attach}", 0.02)

    # --- 1. in-guest sequential I/O -----------------------------------------------------------------------
    def dd(self, device: str, mib: int, pattern: str) -> dict[str, float]:
        """MiB/s of a sequential write then read of `mib` MiB on /dev/`device`, timed in the guest (/proc/uptime:
        busybox's date has no sub-second format). `direct`: 1 MiB blocks with O_DIRECT, one request in flight at a
        time; `buffered`: through the guest's page cache as a file copy goes (the write ends with an fsync, the read
        starts with the cache dropped), so the guest's block layer keeps several requests in flight.
        Where the write's time went, from the guest's own counters: `write_idle_share`, the part of the guest's CPU
        time idle or waiting on I/O (the rest is the guest's own work, dd's copies and its block layer); and
        `write_flush_ms`, the time the disk took to answer the guest's flushes (/sys/block/X/stat)."""
        timed = "s=$(cut -d' ' -f1 /proc/uptime); {cmd} 2>/dev/null; e=$(cut -d' ' -f1 /proc/uptime); echo $s $e"
        counters = f"head -1 /proc/stat; cat /sys/block/{device}/stat; "
        write_flags, read_flags = ("oflag=direct", "iflag=direct") if pattern == "direct" else ("", "")
        write = timed.format(cmd=f"dd if=/dev/zero of=/dev/{device} bs=1M count={mib} {write_flags} conv=fsync")
        read = timed.format(cmd=f"dd if=/dev/{device} of=/dev/null bs=1M count={mib} {read_flags}")
        drop = "sync; echo 3 > /proc/sys/vm/drop_caches; "

        def seconds(line: str) -> float:
            start, end = line.split()
            return max(float(end) - float(start), 0.01)

        lines = self.ssh(drop + counters + write + "; " + counters).strip().splitlines()[-5:]
        cpu = [int(b) - int(a) for a, b in zip(lines[0].split()[1:], lines[3].split()[1:], strict=True)]
        disk = [int(b) - int(a) for a, b in zip(lines[1].split(), lines[4].split(), strict=True)]
        write_s = seconds(lines[2])
        read_s = seconds(self.ssh(drop + read).strip().splitlines()[-1])
        return {
            "write_mib_s": round(mib / write_s, 1),
            "read_mib_s": round(mib / read_s, 1),
            "write_idle_share": round((cpu[3] + cpu[4]) / max(sum(cpu[:8]), 1), 3),  # idle + iowait
            "write_flush_ms": disk[16] if len(disk) > 16 else -1,  # kernels before 5.5 do not count flushes
        }

    def guest_io(self, mib: int, patterns: list[str], repeat: int) -> dict:
        volume = self.ec2.create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
        self.ec2.attach_volume(VolumeId=volume, InstanceId=self.instance, Device="/dev/sdf")
        ebs_dev = wait(lambda: self.device_by_serial(volume), 60, "the volume in the guest", 0.5)
        local = Path(self.world.instances) / "bench-local.img"
        with local.open("wb") as file:
            file.truncate(1 << 30)
        local.chmod(0o666)
        subprocess.run(["virsh", "-c", "qemu:///system", "attach-disk", self.instance, str(local), "vdz",
                        "--targetbus", "virtio", "--subdriver", "raw", "--cache", "none", "--serial", "bench-local",
                        "--live"], check=True, capture_output=True)  # fmt: skip
        local_dev = wait(lambda: self.device_by_serial("bench-local"), 60, "the local disk in the guest", 0.5)
        # Fairness check: a second local disk with the volume's own virtio queue size (the NC's ISCSI_QUEUE_SIZE).
        from services.node_controller.domain import ISCSI_QUEUE_SIZE

        queued = Path(self.world.instances) / "bench-local-queue.img"
        with queued.open("wb") as file:
            file.truncate(1 << 30)
        queued.chmod(0o666)
        disk = self.work / "local-queue.xml"
        disk.write_text(f"<disk type='file' device='disk'><driver name='qemu' type='raw' cache='none' "
                        f"queue_size='{ISCSI_QUEUE_SIZE}'/><source file='{queued}'/><target dev='vdx' bus='virtio'/>"
                        f"<serial>bench-local-queue</serial></disk>")  # fmt: skip
        subprocess.run(["virsh", "-c", "qemu:///system", "attach-device", self.instance, str(disk), "--live"],
                       check=True, capture_output=True)  # fmt: skip
        queued_dev = wait(lambda: self.device_by_serial("bench-local-queue"), 60, "the second local disk", 0.5)
        result: dict = {"mib": mib, "target_ratio": 0.8, "volume_queue_size": ISCSI_QUEUE_SIZE}
        for pattern in patterns:
            rounds: dict[str, list[dict]] = {"ebs": [], "local": [], "local_queue": []}
            for _ in range(repeat):  # alternate, so all see the same load
                rounds["ebs"].append(self.dd(ebs_dev, mib, pattern))
                rounds["local"].append(self.dd(local_dev, mib, pattern))
                rounds["local_queue"].append(self.dd(queued_dev, mib, pattern))
            median = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in rounds.items()}
            ebs, plain, queue = median["ebs"], median["local"], median["local_queue"]
            result[pattern] = {
                "ebs": ebs,
                "local_file_disk": plain,
                "write_ratio": round(ebs["write_mib_s"] / plain["write_mib_s"], 2),
                "read_ratio": round(ebs["read_mib_s"] / plain["read_mib_s"], 2),
                "local_file_disk_same_queue": queue,
                "write_ratio_same_queue": round(ebs["write_mib_s"] / queue["write_mib_s"], 2),
                "read_ratio_same_queue": round(ebs["read_mib_s"] / queue["read_mib_s"], 2),
                "rounds": rounds,
            }
        subprocess.run(["virsh", "-c", "qemu:///system", "detach-disk", self.instance, "vdz", "--live"],
                       capture_output=True)  # fmt: skip
        subprocess.run(["virsh", "-c", "qemu:///system", "detach-device", self.instance, str(disk), "--live"],
                       capture_output=True)  # fmt: skip
        queued.unlink(missing_ok=True)
        self.ec2.detach_volume(VolumeId=volume)
        self.wait_volume(volume, "available")
        self.ec2.delete_volume(VolumeId=volume)
        local.unlink(missing_ok=True)
        return result

    # --- 2. snapshots -------------------------------------------------------------------------------------
    def snapshot_time(self, volume: str) -> float:
        started = time.monotonic()
        snapshot = self.ec2.create_snapshot(VolumeId=volume)["SnapshotId"]

        def done() -> bool:
            found = self.ec2.describe_snapshots(SnapshotIds=[snapshot])["Snapshots"][0]
            if found["State"] == "error":
                raise RuntimeError(f"snapshot failed: {found}")
            return found["State"] == "completed"

        wait(done, 600, "the snapshot", 0.05)
        return time.monotonic() - started

    def by_hand(self, path: Path) -> float:
        """qemu-img convert -c to qcow2, then an S3 upload of the result to Walrus (boto3, multipart)."""
        out = self.work / "by-hand.qcow2"
        s3 = boto3.client("s3", endpoint_url=self.rc["S3_URL"], region_name="eucalyptus",
                          aws_access_key_id=self.rc["EC2_ACCESS_KEY"], aws_secret_access_key=self.rc["EC2_SECRET_KEY"],
                          config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"))  # fmt: skip
        try:
            s3.create_bucket(Bucket="bench-by-hand")
        except s3.exceptions.ClientError:
            pass
        started = time.monotonic()
        subprocess.run(["qemu-img", "convert", "-c", "-O", "qcow2", str(path), str(out)], check=True)
        s3.upload_file(str(out), "bench-by-hand", "volume.qcow2")
        elapsed = time.monotonic() - started
        s3.delete_object(Bucket="bench-by-hand", Key="volume.qcow2")
        out.unlink(missing_ok=True)
        return elapsed

    def volume_path(self, volume_id: str) -> Path:
        return (self.volumes or self.cloud.dir / "data" / "cc-zone1" / "volumes") / f"{volume_id}.img"

    def snapshots(self) -> dict:
        volume = self.ec2.create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
        path = self.volume_path(volume)
        with path.open("r+b") as file:
            for _ in range(1024):
                file.write(os.urandom(MIB))
        by_hand = self.by_hand(path)
        full = self.snapshot_time(volume)
        chunks = random.sample(range(256), 26)  # 10 % of the 4 MiB chunks
        with path.open("r+b") as file:
            for chunk in chunks:
                file.seek(chunk * 4 * MIB)
                file.write(os.urandom(4 * MIB))
        incremental = self.snapshot_time(volume)
        self.ec2.delete_volume(VolumeId=volume)
        return {
            "volume_gib": 1,
            "volumes_on": "the CC's XFS image (reflinks) on ext4, as koala up" if self.volumes else "ext4",
            "changed_fraction": 0.1,
            "full_s": round(full, 2),
            "incremental_s": round(incremental, 2),
            "incremental_speedup": round(full / incremental, 2),
            "target_speedup": 5,
            "full_mib_s": round(1024 / full, 1),
            "by_hand_qemu_img_convert_and_upload_s": round(by_hand, 2),
            "by_hand_mib_s": round(1024 / by_hand, 1),
            "full_vs_by_hand": round(by_hand / full, 2),
            "target_vs_by_hand": 0.8,
        }

    # --- 3. API latency -----------------------------------------------------------------------------------
    def api(self, rounds: int) -> dict:
        create, attach, hand = [], [], []
        for index in range(rounds):
            started = time.monotonic()
            volume = self.ec2.create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
            self.wait_volume(volume, "available")
            create.append(time.monotonic() - started)
            started = time.monotonic()
            self.ec2.attach_volume(VolumeId=volume, InstanceId=self.instance, Device="/dev/sdf")
            self.wait_volume(volume, "in-use", "attached")
            attach.append(time.monotonic() - started)
            wait(lambda v=volume: self.device_by_serial(v), 60, "the disk in the guest", 0.2)  # let it settle
            self.ec2.detach_volume(VolumeId=volume)
            self.wait_volume(volume, "available")
            path = self.volume_path(volume)
            hand.append(self.attach_by_hand(path, 900 + index))
            self.ec2.delete_volume(VolumeId=volume)
        return {
            "rounds": rounds,
            "create_to_available_p50_s": round(statistics.median(create), 3),
            "attach_to_attached_p50_s": round(statistics.median(attach), 3),
            "by_hand_export_and_hotplug_p50_s": round(statistics.median(hand), 3),
            "target_p50_s": 1.0,
        }

    def attach_by_hand(self, path: Path, tid: int) -> float:
        iqn = f"iqn.2010-01.org.koala:bench.{tid}"
        initiator = f"iqn.2010-01.org.koala:bench-initiator.{secrets.token_hex(6)}"
        host, port = self.portal.rsplit(":", 1)
        xml = (f"<disk type='network' device='disk'><driver name='qemu' type='raw' cache='none'/>"
               f"<source protocol='iscsi' name='{iqn}/1'><host name='{host}' port='{port}'/>"
               f"<initiator><iqn name='{initiator}'/></initiator></source><target dev='vdy' bus='virtio'/>"
               f"<serial>bench-{tid}</serial></disk>")  # fmt: skip
        disk = self.work / "disk.xml"
        disk.write_text(xml)
        adm = ["tgtadm", "-C", self.control, "--lld", "iscsi"]
        started = time.monotonic()
        subprocess.run([*adm, "--op", "new", "--mode", "target", "--tid", str(tid), "-T", iqn], check=True)
        subprocess.run([*adm, "--op", "new", "--mode", "logicalunit", "--tid", str(tid), "--lun", "1", "-b",
                        str(path)], check=True)  # fmt: skip
        subprocess.run([*adm, "--op", "bind", "--mode", "target", "--tid", str(tid), "--initiator-name", initiator],
                       check=True)  # fmt: skip
        subprocess.run(["virsh", "-c", "qemu:///system", "attach-device", self.instance, str(disk), "--live"],
                       check=True, capture_output=True)  # fmt: skip
        elapsed = time.monotonic() - started
        wait(lambda: self.device_by_serial(f"bench-{tid}"), 60, "the hand-made disk in the guest", 0.2)
        subprocess.run(["virsh", "-c", "qemu:///system", "detach-device", self.instance, str(disk), "--live"],
                       capture_output=True)  # fmt: skip
        wait(lambda: not self.device_by_serial(f"bench-{tid}"), 60, "the hand-made disk gone", 0.2)
        subprocess.run([*adm, "--op", "delete", "--mode", "target", "--tid", str(tid), "--force"], capture_output=True)
        return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="CreateVolume/AttachVolume rounds (p50)")
    parser.add_argument("--io-mib", type=int, default=1024, help="MiB written and read in the guest (at most 1024)")
    parser.add_argument("--io-patterns", default="direct,buffered", help="direct (O_DIRECT, one request in flight) "
                        "and/or buffered (the guest's page cache)")  # fmt: skip
    parser.add_argument("--io-repeat", type=int, default=3, help="alternating rounds per pattern (median)")
    parser.add_argument("--skip-io", action="store_true")
    parser.add_argument("--skip-snapshot", action="store_true")
    parser.add_argument("--skip-api", action="store_true")
    parser.add_argument("--ext4", action="store_true", help="volumes on this machine's ext4 itself (no reflinks)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print(json.dumps({"skipped": "needs root (libvirtd, namespaces, tgtd)"}))
        return 0
    from cli.allinone import EBS_XFS_IMAGE_GB
    from common.hostcmd import SubprocessRunner
    from services.cluster_controller.storage import volume_fs
    from tests.acceptance.world import acceptance_world

    instances = Path(f"/var/tmp/koala-ebs-bench-{secrets.token_hex(3)}")
    instances.mkdir(mode=0o755)
    work = Path(tempfile.mkdtemp(prefix="koala-ebs-bench-"))
    result: dict = {}
    bench = None
    stack = contextlib.ExitStack()
    try:
        volumes = None if args.ext4 else work / "volumes"
        if volumes is not None:  # unmounted last, once the cloud (and its tgtd) stopped
            stack.callback(lambda: asyncio.run(volume_fs.release(volumes, SubprocessRunner())))
        cc = {"KOALA_EBS_DIR": str(volumes), "KOALA_EBS_XFS_IMAGE_GB": EBS_XFS_IMAGE_GB} if volumes else {}
        extra = {"clc": {"KOALA_EBS_POLL_SECONDS": 1}, "cc": cc}
        # Networks of its own: the migration tests' (10.246/10.247/10.248) took the root namespace's route to the
        # guests and the metadata link's address from a migration test running meanwhile on the same machine.
        with acceptance_world(work, instances, prefix="kb", extra=extra, nets=("10.206.0.0", "10.208.0",
                                                                               "10.207.0")) as world:  # fmt: skip
            bench = Bench(world, work, volumes)
            if not (args.skip_io and args.skip_api):
                bench.boot()  # the snapshots alone need no guest
            try:
                if not args.skip_io:
                    log("in-guest I/O")
                    result["guest_io"] = bench.guest_io(
                        min(args.io_mib, 1024), args.io_patterns.split(","), args.io_repeat
                    )
                if not args.skip_snapshot:
                    log("snapshots")
                    result["snapshot"] = bench.snapshots()
                if not args.skip_api:
                    log("API latency")
                    result["api"] = bench.api(args.rounds)
            finally:
                if bench.instance:
                    bench.ec2.terminate_instances(InstanceIds=[bench.instance])
                    ec2, instance = bench.ec2, bench.instance
                    wait(lambda: ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]
                         ["State"]["Name"] == "terminated", 120, "the guest terminated", 1.0)  # fmt: skip
    finally:
        stack.close()  # the CC's XFS image unmounted
        shutil.rmtree(instances, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
