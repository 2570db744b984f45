"""The instance metadata service of a real CLC process: the instance is known by the request's source address
(guests reach it through the CC's 169.254.169.254 DNAT), `/latest/` and dated versions, 404 for everything
unknown, and the EC2 API at `/` untouched. Instances are written into the CLC's database while it is stopped
(the CC's test driver gives guests no private addresses to come from)."""

from __future__ import annotations

import base64
import http.client
import sqlite3
import time

import pytest

from tests.clc.ec2_helpers import admin_creds, client, start_clc, stop_clean

GUEST, OTHER, GONE, EBS_GUEST = "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk0ZXhhbXBsZWtleWZvcm1ldGFkYXRhdGVzdHM= test"


def seed(db_path, owner: str) -> None:
    now = time.time()
    db = sqlite3.connect(str(db_path))
    with db:
        db.execute(
            "INSERT INTO images(image_id, owner_id, kind, name, location, created_at)"
            " VALUES ('emi-0000abcd', ?, 'machine', 'meta', 'bucket/meta.manifest.xml', ?)",
            (owner, now),
        )
        db.execute(
            "INSERT INTO reservations(reservation_id, owner_id, zone, groups, group_ids, created_at)"
            " VALUES ('r-0000abcd', ?, 'zone1', '[\"default\", \"web\"]', '[]', ?)",
            (owner, now),
        )
        for instance_id, ip, state, data in (
            ("i-0000abcd", GUEST, "running", base64.b64encode(b"#!/bin/sh\necho hello\n").decode()),
            ("i-0000dead", GONE, "terminated", ""),
        ):
            db.execute(
                "INSERT INTO instances(instance_id, reservation_id, owner_id, image_id, kernel_id, vm_type, cores,"
                " memory_mb, disk_gb, zone, state, launch_time, updated_at, private_ip, public_ip, key_name,"
                " key_material, user_data, last_seen) VALUES (?, 'r-0000abcd', ?, 'emi-0000abcd', 'eki-0000abcd',"
                " 'm1.small', 1, 128, 2, 'zone1', ?, ?, ?, ?, '192.0.2.33', 'mykey', ?, ?, ?)",
                (instance_id, owner, state, now, now, ip, KEY, data, now + 3600),
            )
        # An EBS-backed instance: launched with its root and /dev/sdf, /dev/sdg attached since (not in metadata until
        # its next start, as in EC2).
        db.execute(
            "INSERT INTO instances(instance_id, reservation_id, owner_id, image_id, vm_type, cores, memory_mb,"
            " disk_gb, zone, state, launch_time, updated_at, private_ip, last_seen, root_device_type,"
            " root_device_name) VALUES ('i-0000eb5e', 'r-0000abcd', ?, 'emi-0000abcd', 'm1.small', 1, 128, 2,"
            " 'zone1', 'running', ?, ?, ?, ?, 'ebs', '/dev/sda1')",
            (owner, now, now, EBS_GUEST, now + 3600),
        )
        for volume_id, device, boot in (
            ("vol-0000000a", "/dev/sda1", 1),
            ("vol-0000000b", "/dev/sdf", 1),
            ("vol-0000000c", "/dev/sdg", 0),
        ):
            db.execute(
                "INSERT INTO volumes(volume_id, owner_id, zone, size_gb, state, create_time, instance_id, device,"
                " attach_state, boot, updated_at) VALUES (?, ?, 'zone1', 1, 'in-use', ?, 'i-0000eb5e', ?,"
                " 'attached', ?, ?)",
                (volume_id, owner, now, device, boot, now),
            )
    db.close()


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    instance = start_clc(tmp_path_factory.mktemp("metadata") / "cloud")
    try:
        owner = admin_creds(instance).account_id
        instance.stop("clc")
        seed(instance.dir / "data" / "clc" / "clc.db", owner)
        instance.start("clc")
        yield instance
    finally:
        stop_clean(instance)


def get(cloud, path: str, source: str = GUEST, method: str = "GET") -> tuple[int, bytes]:
    port = int(cloud.url("clc").rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("version", ["latest", "2009-04-04", "2012-01-12"])
def test_meta_data_values(cloud, version):
    expected = {
        "instance-id": b"i-0000abcd",
        "ami-id": b"emi-0000abcd",
        "ami-launch-index": b"0",
        "ami-manifest-path": b"bucket/meta.manifest.xml",
        "instance-type": b"m1.small",
        "local-ipv4": GUEST.encode(),
        "local-hostname": GUEST.encode(),
        "public-ipv4": b"192.0.2.33",
        "reservation-id": b"r-0000abcd",
        "kernel-id": b"eki-0000abcd",
        "security-groups": b"default\nweb",
        "placement/availability-zone": b"zone1",
        "public-keys/0/openssh-key": KEY.encode() + b"\n",
        "block-device-mapping/root": b"/dev/sda1",
    }
    for path, value in expected.items():
        assert get(cloud, f"/{version}/meta-data/{path}") == (200, value), path


def test_listings_and_user_data(cloud):
    status, listing = get(cloud, "/latest/meta-data/")
    assert status == 200
    entries = listing.decode().splitlines()
    assert {"instance-id", "ami-id", "placement/", "public-keys/", "block-device-mapping/"} <= set(entries)
    assert "ramdisk-id" not in entries  # the instance has none
    assert get(cloud, "/latest/meta-data/public-keys/") == (200, b"0=mykey")
    assert get(cloud, "/latest/meta-data/public-keys/0/") == (200, b"openssh-key")
    assert get(cloud, "/latest/") == (200, b"meta-data/\nuser-data")
    assert get(cloud, "/latest/user-data") == (200, b"#!/bin/sh\necho hello\n")


def test_block_device_mapping(cloud):
    """EC2's entries: an instance-store instance's root, ephemeral and swap disks; an EBS-backed one's root and its
    other volumes as ebsN (N counting the root as 1)."""
    assert get(cloud, "/latest/meta-data/block-device-mapping/") == (200, b"ami\nemi\nephemeral0\nroot\nswap")
    assert get(cloud, "/latest/meta-data/block-device-mapping/ephemeral0") == (200, b"sda2")
    assert get(cloud, "/latest/meta-data/block-device-mapping/ami", EBS_GUEST) == (200, b"/dev/sda1")
    assert get(cloud, "/latest/meta-data/block-device-mapping/", EBS_GUEST) == (200, b"ami\nebs2\nroot")
    assert get(cloud, "/latest/meta-data/block-device-mapping/root", EBS_GUEST) == (200, b"/dev/sda1")
    assert get(cloud, "/latest/meta-data/block-device-mapping/ebs2", EBS_GUEST) == (200, b"sdf")
    assert get(cloud, "/latest/meta-data/block-device-mapping/ephemeral0", EBS_GUEST)[0] == 404


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("/latest/meta-data/instance-id", OTHER),  # no instance has this address
        ("/latest/meta-data/instance-id", GONE),  # its instance is terminated
        ("/latest/meta-data/no-such-key", GUEST),
        ("/latest/meta-data/instance-id/deeper", GUEST),
        ("/latest/meta-data/placement/nothing", GUEST),
        ("/latest/nothing", GUEST),
        ("/2009-13-45/meta-data/instance-id", GUEST),
        ("/latest/meta-data/" + "x" * 2000, GUEST),
    ],
)
def test_unknown_is_404(cloud, path, source):
    assert get(cloud, path, source)[0] == 404


def test_ec2_api_is_untouched(cloud):
    status, body = get(cloud, "/", GUEST)  # the EC2 API, unsigned: its own error, not metadata
    assert status in (400, 401, 403) and b"<Errors>" in body
    zones = client(cloud, admin_creds(cloud)).describe_availability_zones()["AvailabilityZones"]
    assert [z["ZoneName"] for z in zones] == ["zone1"]
