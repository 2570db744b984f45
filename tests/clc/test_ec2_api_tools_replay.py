"""Every request Amazon's ec2-api-tools 1.6.7.1 sent in the recorded workflow
(`../shared/testdata/ec2-api-tools-1.6.7.1/requests/`), replayed byte for byte against a real cloud (CLC,
Walrus, CC, NC on libvirt's test driver): each is accepted (its SigV2 signature over the path without the
trailing slash the tool adds, at the recorded time) and answered, in the 2013-02-01 namespace, with the elements
the tool reads to print its lines.

The CLC runs through `tests.clc.replay_clc`: a fixed clock for the signature check, the recorded cloud's ids
handed out first, and the recording's throw-away access key given to the cloud admin.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import socket
import sys
import time
from pathlib import Path

import pytest
from defusedxml import ElementTree

from tests.clc.compute_cloud import bundle_and_upload
from tests.clc.ec2_helpers import Creds, admin_creds, ec2_url, sigv2, stop_clean
from tests.harness import Cloud

DATA = Path(__file__).resolve().parents[1] / "data" / "ec2-api-tools-1.6.7.1"  # a copy of the shared recording
ACCESS_KEY, SECRET = "AKIDBICL0GMGCW8DRY0T", "qOEGdjyE-5GSYr2HLn0_8TDONQp6DUAXeWH5F1mM"
IMAGE_ID, INSTANCE_ID = "emi-98daa1dc", "i-4963c6c4"
BUCKET, PREFIX = "koala.checks.ce6780c6/img-20261206-004639", "koala-test.img"
NS = "{http://ec2.amazonaws.com/doc/2013-02-01/}"
# The recording runs from 00:46:42 to 00:46:53; its middle is well inside the 15 minutes EC2 allows either way.
RECORDED = dt.datetime(2026, 12, 6, 0, 46, 47, tzinfo=dt.UTC)
RECORDED_AT = RECORDED.timestamp()


def recorded() -> list[Path]:
    return sorted((DATA / "requests").glob("*.http"))


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    instance = Cloud(tmp_path_factory.mktemp("replay") / "cloud")
    conf = str(instance.aio.conf_path("clc"))
    default_command = instance.aio.command

    def command(role: str) -> list[str]:
        if role != "clc":
            return default_command(role)
        return [
            sys.executable,
            str(Path(__file__).with_name("replay_clc.py")),
            "--now",
            str(RECORDED_AT),
            "--ids",
            f"{IMAGE_ID},{INSTANCE_ID}",
            "--access-key",
            ACCESS_KEY,
            "--secret",
            SECRET,
            "--config",
            conf,
        ]

    instance.aio.command = command  # type: ignore[method-assign]
    instance.start()
    try:
        yield instance
    finally:
        stop_clean(instance)


def replay(cloud: Cloud, path: Path):
    """Send the recorded bytes as they are (Host header and all) to the CLC; the parsed answer."""
    raw = path.read_bytes()
    port = cloud.aio.endpoints()["clc"].port
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
    assert response.status == 200, f"{path.name}: {response.status} {body[:600]!r}"
    root = ElementTree.fromstring(body)
    action = path.stem.split("-", 1)[1]
    assert root.tag == f"{NS}{action}Response", f"{path.name}: {root.tag}"
    assert root.findtext(f"{NS}requestId")
    return root


def text(node, path: str) -> str | None:
    return node.findtext("/".join(NS + part for part in path.split("/")))


def items(node, path: str) -> list:
    return node.findall("/".join(NS + part for part in path.split("/")))


def call(cloud: Cloud, creds: Creds, params: dict[str, str]):
    """An EC2 call of our own between the replayed ones, signed at the fixed clock's time (as the tool would)."""
    reply = sigv2(ec2_url(cloud), {**params, "Version": "2013-02-01"}, creds, timestamp=RECORDED)
    assert reply.status == 200, reply.body
    return reply.xml


def wait_zone_ready(cloud: Cloud, creds: Creds, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        zones = call(cloud, creds, {"Action": "DescribeAvailabilityZones", "ZoneName.1": "verbose"})
        small = [z for z in items(zones, "availabilityZoneInfo/item") if text(z, "zoneName") == "|- m1.small"]
        if small and not text(small[0], "zoneState").startswith("0000"):
            return
        assert time.monotonic() < deadline, "the zone never reported capacity"
        time.sleep(0.2)


def wait_state(cloud: Cloud, creds: Creds, instance_id: str, wanted: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        answer = call(cloud, creds, {"Action": "DescribeInstances", "InstanceId.1": instance_id})
        if text(items(answer, "reservationSet/item/instancesSet/item")[0], "instanceState/name") == wanted:
            return
        assert time.monotonic() < deadline, f"{instance_id} not {wanted} after {timeout} s"
        time.sleep(0.1)


def test_recording_is_complete():
    names = [p.name for p in recorded()]
    assert len(names) == 17 and names[0] == "01-RegisterImage.http" and names[-1] == "17-DeregisterImage.http"
    for path in recorded():
        head = path.read_bytes().split(b"\r\n", 1)[0]
        assert head == b"POST /services/Eucalyptus/ HTTP/1.1", path.name  # the trailing slash the tool adds


def test_replay_every_recorded_request(cloud, tmp_path):
    admin = admin_creds(cloud)
    location = bundle_and_upload(cloud, tmp_path / "bundle", PREFIX, BUCKET)
    assert location == "koala.checks.ce6780c6/img-20261206-004639/koala-test.img.manifest.xml"
    wait_zone_ready(cloud, admin)
    steps = {p.stem.split("-", 1)[0]: p for p in recorded()}
    answers = {}

    def step(number: str):
        answers[number] = replay(cloud, steps[number])
        return answers[number]

    # ec2-register: IMAGE <id>
    assert text(step("01"), "imageId") == IMAGE_ID
    # ec2-describe-images: IMAGE id, location (owner/name), owner, state, visibility, arch, type
    image = items(step("02"), "imagesSet/item")
    assert len(image) == 1
    assert text(image[0], "imageId") == IMAGE_ID
    assert text(image[0], "imageLocation") == location
    assert text(image[0], "imageOwnerId") == admin.account_id
    assert text(image[0], "imageState") == "available"
    assert text(image[0], "isPublic") in ("true", "false")
    assert text(image[0], "architecture") == "x86_64"
    assert text(image[0], "imageType") == "machine"
    assert text(image[0], "name") == "kc-image-ce6780c6"
    assert text(image[0], "rootDeviceName") == "/dev/sda1"
    # ec2-describe-availability-zones [verbose]: AVAILABILITYZONE name state region
    zones = items(step("03"), "availabilityZoneInfo/item")
    assert [text(z, "zoneName") for z in zones] == ["zone1"]
    assert text(zones[0], "zoneState") == "available" and text(zones[0], "regionName")
    verbose = [text(z, "zoneName") for z in items(step("04"), "availabilityZoneInfo/item")]
    assert verbose[0] == "zone1" and "|- m1.small" in verbose
    # ec2-add-keypair: KEYPAIR name fingerprint, then the private key
    keypair = step("05")
    assert text(keypair, "keyName") == "kc-key-ce6780c6"
    assert len(text(keypair, "keyFingerprint").split(":")) == 20
    assert text(keypair, "keyMaterial").startswith("-----BEGIN")
    keys = items(step("06"), "keySet/item")
    assert "kc-key-ce6780c6" in [text(k, "keyName") for k in keys]
    # ec2-add-group: GROUP id name description; ec2-authorize: PERMISSION ...
    group = step("07")
    assert text(group, "groupId").startswith("sg-")
    assert text(step("08"), "return") == "true"
    rules = call(cloud, admin, {"Action": "DescribeSecurityGroups", "GroupName.1": "kc-group-ce6780c6"})
    rule = items(rules, "securityGroupInfo/item/ipPermissions/item")
    assert len(rule) == 1
    assert [text(rule[0], f) for f in ("ipProtocol", "fromPort", "toPort")] == ["tcp", "22", "22"]
    assert text(rule[0], "ipRanges/item/cidrIp") == "0.0.0.0/0"
    # ec2-run-instances -g NAME (sent as SecurityGroupId.1): RESERVATION, INSTANCE lines
    run = step("09")
    assert text(run, "reservationId").startswith("r-") and text(run, "ownerId") == admin.account_id
    launched = items(run, "instancesSet/item")
    assert [text(i, "instanceId") for i in launched] == [INSTANCE_ID]
    assert text(launched[0], "imageId") == IMAGE_ID
    assert text(launched[0], "instanceState/name") == "pending"
    assert text(launched[0], "keyName") == "kc-key-ce6780c6"
    assert text(launched[0], "instanceType") == "m1.small"
    assert text(launched[0], "placement/availabilityZone") == "zone1"
    assert [text(g, "groupName") for g in items(launched[0], "groupSet/item")] == ["kc-group-ce6780c6"]
    # ec2-describe-instances, polled until running (as the recording did)
    for number in ("10", "11"):
        found = items(step(number), "reservationSet/item/instancesSet/item")
        assert [text(i, "instanceId") for i in found] == [INSTANCE_ID]
        assert text(found[0], "instanceState/name") in ("pending", "running")
    wait_state(cloud, admin, INSTANCE_ID, "running")
    running = items(step("11"), "reservationSet/item/instancesSet/item")[0]
    assert text(running, "instanceState/name") == "running" and text(running, "launchTime")
    # ec2-get-console-output: decodes <output> unconditionally (an NPE in the tool if it is missing)
    console = step("12")
    assert text(console, "instanceId") == INSTANCE_ID and text(console, "timestamp")
    output = console.find(f"{NS}output")
    assert output is not None
    base64.b64decode(output.text or "", validate=True)
    # ec2-terminate-instances: INSTANCE id previous-state current-state
    gone = items(step("13"), "instancesSet/item")
    assert [text(i, "instanceId") for i in gone] == [INSTANCE_ID]
    assert text(gone[0], "previousState/name") == "running"
    assert text(gone[0], "currentState/name") in ("shutting-down", "terminated")
    assert text(step("14"), "return") == "true"  # ec2-delete-keypair
    wait_state(cloud, admin, INSTANCE_ID, "terminated")
    final = items(step("15"), "reservationSet/item/instancesSet/item")
    assert text(final[0], "instanceState/name") == "terminated"
    assert text(step("16"), "return") == "true"  # ec2-delete-group
    assert text(step("17"), "return") == "true"  # ec2-deregister
    assert sorted(answers) == sorted(steps), "every recorded request was replayed"
    left = sigv2(ec2_url(cloud), {"Action": "DescribeImages", "ImageId.1": IMAGE_ID}, admin, timestamp=RECORDED)
    assert left.code == "InvalidAMIID.NotFound"  # deregistered


def test_replay_refused_when_changed(cloud):
    """The replay is a real signature check: the same bytes with one signed parameter changed are refused."""
    raw = (DATA / "requests" / "06-DescribeKeyPairs.http").read_bytes()
    changed = raw.replace(b"Version=2013-02-01", b"Version=2013-02-02")
    assert changed != raw and len(changed) == len(raw)
    port = cloud.aio.endpoints()["clc"].port
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(changed)
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
    assert response.status == 403
    assert ElementTree.fromstring(body).findtext("Errors/Error/Code") == "SignatureDoesNotMatch"
