"""`koala up --ceph --database postgresql`: the all-in-one cloud on a single-node Ceph cluster of its own
(DIR/ceph) and a PostgreSQL server of its own (DIR/postgres): Walrus keeps object data in RADOS and its metadata in
PostgreSQL, the CLC its state in PostgreSQL, the zone its EBS volumes as RBD images; `koala down` stops the Ceph
daemons and PostgreSQL with the services, the next `koala up` starts them again and finds every object and volume.
(The system network and libvirt's test driver: the data path under QEMU is tests/ebs/test_rbd_guest.py's.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import boto3
import pytest

from cli.ceph_local import EBS_POOL, WALRUS_POOL, CephCluster
from cli.postgres_local import LocalPostgres
from services.cloud_controller.identity.credentials import parse_eucarc
from tests.ceph import pool_io, rbd_images
from tests.harness import free_port_run
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
KOALA = [sys.executable, "-m", "cli"]


def koala(state: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([*KOALA, *args, "--state-dir", str(state)], capture_output=True, text=True, cwd=REPO,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_koala_up_with_ceph() -> None:
    if shutil.which("ceph-mon") is None:
        pytest.skip("needs Debian's ceph packages (deploy/bootstrap.sh)")
    # PostgreSQL runs as the postgres user: the state directory's parents must let it in (tmp_path's do not)
    base = Path(tempfile.mkdtemp(prefix="koala-up-ceph-"))
    base.chmod(0o755)
    state = base / "cloud"
    port_base = str(free_port_run(4))
    try:
        up = koala(state, "up", "--detach", "--ceph", "--database", "postgresql", "--network", "system",
                   "--hypervisor", "test", "--no-image", "--port-base", port_base)  # fmt: skip
        assert "ceph: monitor 127.0.0.1:" in up.stdout
        assert "database: PostgreSQL on 127.0.0.1:" in up.stdout
        cluster = CephCluster(state / "ceph")
        postgres = LocalPostgres(state / "postgres")
        creds = parse_eucarc(state / "eucarc")
        keys = {"aws_access_key_id": creds["EC2_ACCESS_KEY"], "aws_secret_access_key": creds["EC2_SECRET_KEY"]}
        s3 = boto3.client("s3", endpoint_url=creds["S3_URL"], region_name="us-east-1", **keys)
        ec2 = boto3.client("ec2", endpoint_url=creds["EC2_URL"], region_name="eucalyptus", **keys)
        body = os.urandom(200 << 10)  # bigger than what the metadata database keeps inline
        s3.create_bucket(Bucket="on-ceph")
        s3.put_object(Bucket="on-ceph", Key="object", Body=body)
        walrus_id = json.loads((state / "endpoints.json").read_text())["walrus"]["id"]
        with pool_io(cluster, WALRUS_POOL) as ioctx:
            ioctx.set_namespace(walrus_id)
            assert [entry.key for entry in ioctx.list_objects()], "no object data in RADOS"
        assert not any((state / "data" / walrus_id / "objects" / "data").rglob("*.*"))
        volume = ec2.create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
        wait_for(lambda: ec2.describe_volumes(VolumeIds=[volume])["Volumes"][0]["State"] == "available", 60, 0.3,
                 "the volume")  # fmt: skip
        assert f"zone1.{volume}" in rbd_images(cluster, EBS_POOL)
        assert postgres.psql(f"SELECT count(*) FROM volumes WHERE volume_id = '{volume}'", "clc") == "1"
        assert postgres.psql("SELECT count(*) FROM versions WHERE key = 'object'", "walrus") == "1"
        assert not (state / "data" / walrus_id / "objects" / "walrus.db").exists()

        down = koala(state, "down")
        assert "osd.0" in down.stdout and "mon.a" in down.stdout and "postgresql" in down.stdout
        assert all(cluster.pid_file(name).running() is None for name in ("mon.a", "mgr.x", "osd.0"))
        assert postgres.running_pid() is None

        koala(state, "up", "--detach", "--no-image")
        assert s3.get_object(Bucket="on-ceph", Key="object")["Body"].read() == body
        assert ec2.describe_volumes(VolumeIds=[volume])["Volumes"][0]["State"] == "available"
        ec2.delete_volume(VolumeId=volume)
        wait_for(lambda: f"zone1.{volume}" not in rbd_images(cluster, EBS_POOL), 60, 0.3, "the image removed")
    finally:
        subprocess.run([*KOALA, "down", "--state-dir", str(state)], capture_output=True, cwd=REPO, timeout=300)
        shutil.rmtree(base, ignore_errors=True)
