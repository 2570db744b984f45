"""`koala up --scale-out` on the default (MANAGED-NOVLAN) network: the all-in-one cloud on a single-node Ceph
cluster of its own (DIR/ceph) and a PostgreSQL server of its own (DIR/postgres), with two CLCs behind HAProxy and
two Walrus front ends. Walrus keeps object data in RADOS and its metadata in PostgreSQL (an object PUT through one
front end is read through the other), the CLCs their state in PostgreSQL, the zone its EBS volumes as RBD images.
The active CLC is killed (-9): the standby takes over behind the same EC2 endpoint, and serves the guests'
metadata (the guest launched afterwards gets its SSH key from it); `koala status` reports the CLC standing by as such
(exit code 0) before, and the killed one as not running (1) after. QEMU runs in the cloud's router namespace: the
guest gets an RBD volume attached, writes to it, and the bytes are in the image as Ceph reads them (the monitor
and OSD listen on the host's end of the link). `koala down` stops everything; after the link is gone (as after a
reboot) the next `koala up` puts it back before Ceph starts on it, and finds every object and volume. Then
`koala down --purge` leaves no daemon and nothing of the state directory, Ceph's and PostgreSQL's included.

The "host" is a network namespace of the test's own (tests/allinone/new_host.py): the link, the Ceph daemons and
PostgreSQL live there, nothing of the shared machine's network changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import BotoCoreError, ClientError

from cli.allinone import AllInOne, qemu_installed
from cli.ceph_local import EBS_POOL, WALRUS_POOL, CephCluster
from cli.postgres_local import LocalPostgres
from common.config import parse_conf
from common.daemon import alive
from services.cloud_controller.identity.credentials import parse_eucarc
from tests.allinone.new_host import inside_new_host
from tests.ceph import pool_io, rbd_images
from tests.harness import free_port_run
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, libvirtd)"),
    pytest.mark.timeout(900),
]
REPO = Path(__file__).resolve().parents[2]
KOALA = [sys.executable, "-m", "cli"]


def koala(state: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([*KOALA, *args, "--state-dir", str(state)], capture_output=True, text=True, cwd=REPO,
                            timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def ssh(key_file: Path, address: str, command: str) -> subprocess.CompletedProcess:
    """The host's own OpenSSH client into a guest's public address."""
    return subprocess.run(
        ["ssh", "-i", str(key_file), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=4", "-o", "LogLevel=ERROR",
         f"root@{address}", command],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def rbd_read(cluster: CephCluster, image: str, offset: int, length: int) -> bytes:
    import rbd

    with pool_io(cluster, EBS_POOL) as ioctx, rbd.Image(ioctx, image, read_only=True) as handle:
        return bytes(handle.read(offset, length))


def logs(state: Path) -> str:
    cloud = AllInOne(state)
    return "\n".join(f"--- {role}\n{cloud.log_path(role).read_text(errors='replace')[-2500:]}"
                     for role in ("cc", "nc") if cloud.log_path(role).exists())  # fmt: skip


def clc_health(port: int) -> int:
    """The HTTP status of a CLC's /healthz (200 active, 503 standing by), 0 when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


@dataclass
class Status:
    returncode: int
    stdout: str
    stderr: str
    lines: dict[str, str]  # role -> its line


def status_lines(state: Path) -> Status:
    """`koala status`, its line for each process of the cloud."""
    done = subprocess.run([*KOALA, "status", "--state-dir", str(state)], capture_output=True, text=True, cwd=REPO,
                          timeout=120)  # fmt: skip
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    return Status(done.returncode, done.stdout, done.stderr, lines)


def answers(call) -> bool:
    try:
        call()
    except (BotoCoreError, ClientError):
        return False
    return True


def test_koala_up_scale_out_fails_over_and_attaches_an_rbd_volume_to_a_guest() -> None:
    if shutil.which("ceph-mon") is None or shutil.which("haproxy") is None:
        pytest.skip("needs Debian's ceph and haproxy packages (deploy/bootstrap.sh)")
    if not qemu_installed():
        pytest.fail("QEMU and libvirt's daemons are not installed: deploy/bootstrap.sh installs them")
    # libvirt's qemu user reaches the instance files; PostgreSQL (the postgres user) enters the state directory
    base = Path(f"/var/tmp/koala-up-ceph-{secrets.token_hex(3)}")
    base.mkdir(mode=0o755)
    state = base / "cloud"
    with inside_new_host():
        try:
            up = koala(state, "up", "--detach", "--scale-out", "--hypervisor", "qemu",
                       "--port-base", str(free_port_run(4)))  # fmt: skip
            cloud = AllInOne(state)
            network = cloud.network()
            assert network is not None, up.stdout
            assert f"ceph: monitor {network.host_ip}:" in up.stdout, up.stdout
            assert "database: PostgreSQL on 127.0.0.1:" in up.stdout and "scale-out: CLCs" in up.stdout
            endpoints = cloud.endpoints()
            clc_ports = {"clc": int(parse_conf(cloud.conf_path("clc").read_text())["KOALA_CLC_PORT"].value),
                         "clc2": endpoints["clc2"].port}  # fmt: skip
            assert endpoints["clc"].port not in clc_ports.values()  # the door's
            health = {role: clc_health(port) for role, port in clc_ports.items()}
            assert sorted(health.values()) == [200, 503], health
            active = next(role for role, status in health.items() if status == 200)
            standby = next(role for role in clc_ports if role != active)
            # `koala status`: the door and both CLCs, each at its own port, the one standing by reported so
            status = status_lines(state)
            assert status.returncode == 0, status.stdout + status.stderr
            assert "standby (active elsewhere)" in status.lines[standby], status.stdout
            assert " up " in status.lines[active] and " up " in status.lines["clc-door"], status.stdout
            assert "BadIdentity" not in status.stdout, status.stdout
            cluster = CephCluster(state / "ceph")
            postgres = LocalPostgres(state / "postgres")
            creds = parse_eucarc(state / "eucarc")
            keys = {"aws_access_key_id": creds["EC2_ACCESS_KEY"], "aws_secret_access_key": creds["EC2_SECRET_KEY"]}
            assert creds["EC2_URL"].startswith(endpoints["clc"].url), creds["EC2_URL"]
            s3 = boto3.client("s3", endpoint_url=creds["S3_URL"], region_name="us-east-1", **keys)
            s3_other = boto3.client("s3", endpoint_url=endpoints["walrus2"].url, region_name="us-east-1", **keys)
            ec2 = boto3.client("ec2", endpoint_url=creds["EC2_URL"], region_name="eucalyptus", **keys)
            body = os.urandom(200 << 10)  # bigger than what the metadata database keeps inline
            s3.create_bucket(Bucket="on-ceph")
            s3.put_object(Bucket="on-ceph", Key="object", Body=body)
            assert s3_other.get_object(Bucket="on-ceph", Key="object")["Body"].read() == body
            s3_other.put_object(Bucket="on-ceph", Key="other", Body=b"from the second front end")
            assert s3.get_object(Bucket="on-ceph", Key="other")["Body"].read() == b"from the second front end"
            walrus_id = json.loads((state / "endpoints.json").read_text())["walrus"]["id"]
            with pool_io(cluster, WALRUS_POOL) as ioctx:
                ioctx.set_namespace(walrus_id)
                assert [entry.key for entry in ioctx.list_objects()], "no object data in RADOS"
            assert not any((state / "data" / walrus_id / "objects" / "data").rglob("*.*"))
            assert postgres.psql("SELECT count(*) FROM versions WHERE key = 'object'", "walrus") == "1"
            assert not (state / "data" / walrus_id / "objects" / "walrus.db").exists()

            # The active CLC dies: the standby takes over behind the same endpoint (the door).
            os.kill(cloud.running_pid(active) or 0, signal.SIGKILL)
            wait_for(lambda: clc_health(clc_ports[standby]) == 200, 30, 0.2, "the standby CLC active")
            wait_for(lambda: answers(ec2.describe_availability_zones), 30, 0.5, "the EC2 API through the door")
            status = status_lines(state)  # the cloud serves, but one of its CLCs is dead: not fine
            assert status.returncode == 1 and "not running" in status.lines[active], status.stdout
            assert " up " in status.lines[standby] and "standby" not in status.stdout, status.stdout

            # A guest in the router namespace, its metadata (the SSH key) from the CLC that took over, gets an RBD
            # volume: QEMU's rbd driver reaches the monitor and OSD.
            key_file = base / "ceph.pem"
            key_file.write_text(ec2.create_key_pair(KeyName="ceph")["KeyMaterial"])
            key_file.chmod(0o600)
            ec2.authorize_security_group_ingress(GroupName="default", IpProtocol="tcp", FromPort=22, ToPort=22,
                                                 CidrIp="0.0.0.0/0")  # fmt: skip
            image = json.loads((state / "images.json").read_text())["machine"]
            guest = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, KeyName="ceph",
                                      InstanceType="m1.small")["Instances"][0]["InstanceId"]  # fmt: skip

            def address() -> str | None:
                found = ec2.describe_instances(InstanceIds=[guest])["Reservations"][0]["Instances"][0]
                public = found.get("PublicIpAddress")
                if found["State"]["Name"] != "running" or not public:
                    return None
                return public if ssh(key_file, public, "true").returncode == 0 else None

            public = wait_for(address, 300, 2.0, lambda: "SSH into the guest\n" + logs(state))
            volume = ec2.create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
            wait_for(lambda: ec2.describe_volumes(VolumeIds=[volume])["Volumes"][0]["State"] == "available", 60,
                     0.3, "the volume")  # fmt: skip
            rbd_image = f"zone1.{volume}"
            assert rbd_image in rbd_images(cluster, EBS_POOL)
            assert postgres.psql(f"SELECT count(*) FROM volumes WHERE volume_id = '{volume}'", "clc") == "1"
            ec2.attach_volume(VolumeId=volume, InstanceId=guest, Device="/dev/sdf")
            find = f'for d in /sys/block/vd*; do [ "$(cat $d/serial 2>/dev/null)" = "{volume}" ] && echo ${{d##*/}}; '
            find += "done"
            device = wait_for(lambda: ssh(key_file, public, find).stdout.strip(), 90, 1.0,
                              lambda: "the RBD disk in the guest\n" + logs(state))  # fmt: skip
            written = ssh(key_file, public, f"dd if=/dev/urandom of=/tmp/data bs=64k count=16 2>/dev/null && "
                                            f"dd if=/tmp/data of=/dev/{device} bs=64k seek=16 conv=fsync 2>/dev/null "
                                            f"&& md5sum /tmp/data")  # fmt: skip
            assert written.returncode == 0, written.stdout + written.stderr
            digest = written.stdout.split()[0]
            assert hashlib.md5(rbd_read(cluster, rbd_image, 1 << 20, 1 << 20)).hexdigest() == digest
            ec2.detach_volume(VolumeId=volume)
            wait_for(lambda: ec2.describe_volumes(VolumeIds=[volume])["Volumes"][0]["State"] == "available", 60,
                     0.5, "the volume detached")  # fmt: skip
            ec2.terminate_instances(InstanceIds=[guest])
            wait_for(lambda: ec2.describe_instances(InstanceIds=[guest])["Reservations"][0]["Instances"][0]["State"][
                "Name"] == "terminated", 120, 1.0, "the guest terminated")  # fmt: skip

            down = koala(state, "down")
            assert "osd.0" in down.stdout and "mon.a" in down.stdout and "postgresql" in down.stdout
            assert all(cloud.running_pid(role) is None for role in cloud.members()), down.stdout
            assert {"clc-door", "walrus2", standby} <= set(down.stdout.split(": ", 1)[1].split(", ")), down.stdout
            assert all(cluster.pid_file(name).running() is None for name in ("mon.a", "mgr.x", "osd.0"))
            assert postgres.running_pid() is None
            # As after a reboot: the link (and with it the address Ceph listens on) is gone until `koala up`.
            subprocess.run(["ip", "link", "del", network.host_link], check=True)

            koala(state, "up", "--detach", "--no-image")
            assert all(cloud.running_pid(role) for role in cloud.members())
            assert s3_other.get_object(Bucket="on-ceph", Key="object")["Body"].read() == body
            assert ec2.describe_volumes(VolumeIds=[volume])["Volumes"][0]["State"] == "available"
            ec2.delete_volume(VolumeId=volume)
            wait_for(lambda: rbd_image not in rbd_images(cluster, EBS_POOL), 60, 0.3, "the image removed")

            # The purge stops Ceph and PostgreSQL and removes everything `koala up` made, their directories too.
            engines = [cluster.pid_file(name).running() for name in ("mon.a", "mgr.x", "osd.0")]
            engines.append(postgres.running_pid())
            assert all(engines), engines
            purge = koala(state, "down", "--purge")
            assert not state.exists() or not any(state.iterdir()), purge.stdout + str(list(state.iterdir()))
            assert not [pid for pid in engines if alive(pid or 0)], purge.stdout
            processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
            assert not [line for line in processes if str(state) in line], purge.stdout
        finally:
            if state.exists():  # a failure before the purge above: leave nothing behind anyway
                subprocess.run([*KOALA, "down", "--purge", "--state-dir", str(state)], capture_output=True,
                               cwd=REPO, timeout=300)  # fmt: skip
            shutil.rmtree(base, ignore_errors=True)
