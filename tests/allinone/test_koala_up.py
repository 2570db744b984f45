"""`koala up` as a new user meets it, end to end on real QEMU guests, with one cloud shared by the module.

The README's quick-start block runs as written (bootstrap, `koala up`, key pair, SSH rule, run, wait, SSH from
the host into the guest's public address); then, on that cloud: the guest's DHCP address and metadata, a revoked
rule cutting SSH, an elastic IP moved to a second guest, an EBS volume written in that guest, a second account
running the public image and the admin making it private and public again, 16 m1.small admitted, `koala up`
again changing nothing, `koala down` leaving the guests (and their network) to be adopted by the next `koala up`,
and `koala down --purge` leaving nothing of the cloud: no namespace, link, firewall rule, libvirtd, dnsmasq or
QEMU process.

The "host" is a network namespace of this module's own, which the test process (its main thread, so every command
it runs) enters for the module's duration: nothing else on this shared machine changes that host's network, so
its `ip -o link`, `ip route` and `iptables-save` are compared exactly: while the cloud is up they differ from
before only by the one link to the public pool and that link's own routes, and after the purge not at all.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from cli.allinone import AllInOne, qemu_installed
from cli.cloud_network import CloudNetwork
from services.cloud_controller.identity.credentials import parse_eucarc
from services.cluster_controller.storage import volume_fs
from tests.allinone.new_host import inside_new_host
from tests.harness import free_port_run
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, libvirtd)"),
]

REPO = Path(__file__).resolve().parents[2]
KOALA = [sys.executable, "-m", "cli"]
PYTHON_WARNING = re.compile(r"\w+Warning: ")  # as the warnings module prints them (CryptographyDeprecationWarning)


def host_snapshot() -> dict[str, set[str]]:
    """The host's links, routes and firewall (root namespace), one line each, counters left out."""

    def lines(*argv: str) -> set[str]:
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        return {line.strip() for line in out.splitlines() if line.strip() and not line.startswith("#")}

    links = {re.sub(r"^\d+: ", "", line) for line in lines("ip", "-o", "link", "show")}
    rules = {re.sub(r"\[\d+:\d+\]", "", line) for line in lines("iptables-save")}
    return {"link": links, "route": lines("ip", "route", "show", "table", "all"), "iptables": rules}


@dataclass
class UpCloud:
    work: Path
    state: Path
    env: dict[str, str]
    before: dict[str, set[str]]  # the host's network before `koala up`
    key_file: Path = Path()
    guests: dict[str, str] = field(default_factory=dict)  # role -> instance id

    @property
    def aio(self) -> AllInOne:
        return AllInOne(self.state)

    @property
    def network(self) -> CloudNetwork:
        network = self.aio.network()
        assert network is not None, "koala up made no network"
        return network

    def koala(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        result = subprocess.run([*KOALA, *args], capture_output=True, text=True, env=self.env, cwd=REPO,
                                timeout=timeout)  # fmt: skip
        assert not PYTHON_WARNING.search(result.stderr), result.stderr  # no third-party warnings on the command line
        return result

    def ec2(self, creds: dict[str, str] | None = None):
        creds = creds or parse_eucarc(self.state / "eucarc")
        return boto3.client(
            "ec2", endpoint_url=creds["EC2_URL"], region_name="eucalyptus",
            aws_access_key_id=creds["EC2_ACCESS_KEY"], aws_secret_access_key=creds["EC2_SECRET_KEY"],
        )  # fmt: skip

    def ssh(self, address: str, command: str = "hostname", attempts: int = 1) -> subprocess.CompletedProcess:
        """The host's own OpenSSH client into a guest, as the user would."""
        return subprocess.run(
            ["ssh", "-i", str(self.key_file), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=4", "-o", f"ConnectionAttempts={attempts}",
             "-o", "LogLevel=ERROR", f"root@{address}", command],
            capture_output=True, text=True, timeout=30 + 6 * attempts,
        )  # fmt: skip

    def logs(self) -> str:
        return "\n".join(f"--- {role}\n{self.aio.log_path(role).read_text(errors='replace')[-2500:]}"
                         for role in ("clc", "cc", "nc") if self.aio.log_path(role).exists())  # fmt: skip


@pytest.fixture(scope="module")
def up() -> Iterator[UpCloud]:
    if not qemu_installed():
        pytest.fail("QEMU and libvirt's daemons are not installed: deploy/bootstrap.sh installs them")
    work = Path(f"/var/tmp/koala-up-{secrets.token_hex(3)}")  # libvirt's qemu user reaches the instance files
    work.mkdir(mode=0o755)
    state = work / "cloud"
    with inside_new_host():
        # The block runs as written; the environment points it at this test's state directory and free ports.
        env = {**os.environ, "KOALA_CLOUD_DIR": str(state), "KOALA_PORT_BASE": str(free_port_run(4))}
        for key in [k for k in env if k.startswith(("AWS_", "EC2_", "S3_"))]:
            env.pop(key)  # the block sources the cloud's own eucarc
        cloud = UpCloud(work, state, env, host_snapshot())
        try:
            yield cloud
        finally:
            if state.exists():  # a test failed before the purge test: leave nothing behind anyway
                subprocess.run([*KOALA, "down", "--purge"], capture_output=True, env=env, cwd=REPO, timeout=300)
            shutil.rmtree(work, ignore_errors=True)


def quick_start_block() -> str:
    readme = (REPO / "README.md").read_text()
    marker = readme.index("<!-- quick-start:")
    return readme[marker:].split("```sh\n", 1)[1].split("```", 1)[0]


def console(ec2, instance_id: str) -> str:
    return ec2.get_console_output(InstanceId=instance_id).get("Output", "") or ""


def instance(ec2, instance_id: str) -> dict:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def test_readme_quick_start_block(up: UpCloud) -> None:
    block = quick_start_block()
    run = subprocess.run(["bash", "-eo", "pipefail", "-c", block], capture_output=True, text=True, env=up.env,
                         cwd=REPO, timeout=900)  # fmt: skip
    key = REPO / "mykey.pem"
    if key.exists():  # the block writes the key pair where the user stands: keep it with the test's files
        up.key_file = up.work / "mykey.pem"
        shutil.move(key, up.key_file)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + up.logs()
    assert not PYTHON_WARNING.search(run.stderr), run.stderr
    # The last command ran `hostname` inside the guest, over SSH from the host to the public address.
    said = run.stdout.strip().splitlines()[-1]
    ec2 = up.ec2()
    found = instance(ec2, said)
    assert found["State"]["Name"] == "running" and found["ImageId"].startswith("emi-"), found
    up.guests["first"] = said


def test_guest_network_metadata_and_security_group(up: UpCloud) -> None:
    ec2, network = up.ec2(), up.network
    first = instance(ec2, up.guests["first"])
    private, public = first["PrivateIpAddress"], first["PublicIpAddress"]
    assert ipaddress.IPv4Address(private) in ipaddress.IPv4Network(network.private), first
    assert ipaddress.IPv4Address(public) in ipaddress.IPv4Network(network.public), first
    text = console(ec2, first["InstanceId"])
    # The address came from the CC's DHCP server, the identity and key from the metadata service over the network.
    assert f"KOALA-GUEST dhcp {private}/" in text, text[-2000:]
    assert f"KOALA-GUEST metadata instance={first['InstanceId']}" in text, text[-2000:]
    assert "KOALA-GUEST ssh-key installed" in text and "source=metadata" in text, text[-2000:]

    assert up.ssh(public).stdout.strip() == first["InstanceId"]
    ec2.revoke_security_group_ingress(GroupName="default", IpProtocol="tcp", FromPort=22, ToPort=22,
                                      CidrIp="0.0.0.0/0")  # fmt: skip
    wait_for(lambda: up.ssh(public).returncode != 0, 60, 1, "the revoked rule to cut SSH")
    ec2.authorize_security_group_ingress(GroupName="default", IpProtocol="tcp", FromPort=22, ToPort=22,
                                         CidrIp="0.0.0.0/0")  # fmt: skip
    wait_for(lambda: up.ssh(public).stdout.strip() == first["InstanceId"], 60, 1, "SSH back with the rule")


def test_elastic_ip_moves_to_a_second_guest(up: UpCloud) -> None:
    ec2 = up.ec2()
    image = instance(ec2, up.guests["first"])["ImageId"]
    second = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, KeyName="mykey",
                               InstanceType="m1.small")["Instances"][0]["InstanceId"]  # fmt: skip
    up.guests["second"] = second
    wait_for(lambda: f"KOALA-GUEST ready instance={second}" in console(ec2, second), 300, 1,
             lambda: console(ec2, second)[-2000:] + up.logs())  # fmt: skip
    elastic = ec2.allocate_address()["PublicIp"]
    assert ipaddress.IPv4Address(elastic) in ipaddress.IPv4Network(up.network.public)
    ec2.associate_address(InstanceId=up.guests["first"], PublicIp=elastic)
    wait_for(lambda: up.ssh(elastic).stdout.strip() == up.guests["first"], 60, 1, "the elastic IP on the first guest")
    ec2.associate_address(InstanceId=second, PublicIp=elastic, AllowReassociation=True)
    wait_for(lambda: up.ssh(elastic).stdout.strip() == second, 60, 1, "the elastic IP moved to the second guest")
    assert instance(ec2, second)["PublicIpAddress"] == elastic


def test_ebs_volume_reaches_the_guest(up: UpCloud) -> None:
    """QEMU runs in the router namespace: it reaches the zone's iSCSI portal on the host's end of the link."""
    ec2, second = up.ec2(), up.guests["second"]
    address = instance(ec2, second)["PublicIpAddress"]
    volumes = up.state / "data" / "cc-zone1" / "volumes"  # on ext4 here: the CC's own XFS image
    assert volume_fs.has_reflinks(volumes), up.logs()  # so snapshots after the first read only what changed
    volume = ec2.create_volume(AvailabilityZone="zone1", Size=1)["VolumeId"]
    wait_for(lambda: ec2.describe_volumes(VolumeIds=[volume])["Volumes"][0]["State"] == "available", 60, 0.5,
             "the volume available")  # fmt: skip
    ec2.attach_volume(VolumeId=volume, InstanceId=second, Device="/dev/sdf")
    find = 'for d in /sys/block/vd*; do [ "$(cat $d/serial 2>/dev/null)" = "' + volume + '" ] && echo ${d##*/}; done'
    device = wait_for(lambda: up.ssh(address, find).stdout.strip(), 60, 1, up.logs)
    written = up.ssh(address, f"echo koala-ebs | dd of=/dev/{device} conv=fsync 2>/dev/null && "
                              f"dd if=/dev/{device} bs=9 count=1 2>/dev/null")  # fmt: skip
    assert written.stdout.startswith("koala-ebs"), written.stdout + written.stderr
    ec2.detach_volume(VolumeId=volume)
    wait_for(lambda: ec2.describe_volumes(VolumeIds=[volume])["Volumes"][0]["State"] == "available", 60, 0.5,
             "the volume detached")  # fmt: skip
    ec2.delete_volume(VolumeId=volume)


def test_second_account_runs_the_public_image_and_admin_can_hide_it(up: UpCloud) -> None:
    ec2 = up.ec2()
    image = instance(ec2, up.guests["first"])["ImageId"]
    made = up.koala("admin", "create-account", f"user{secrets.token_hex(2)}")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    bob = up.ec2({"EC2_URL": parse_eucarc(up.state / "eucarc")["EC2_URL"], "EC2_ACCESS_KEY": key["access_key_id"],
                  "EC2_SECRET_KEY": key["secret_access_key"]})  # fmt: skip
    assert image in {i["ImageId"] for i in bob.describe_images()["Images"]}
    theirs = bob.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="m1.small")
    theirs_id = theirs["Instances"][0]["InstanceId"]
    wait_for(lambda: instance(bob, theirs_id)["State"]["Name"] == "running", 120, 1, up.logs)
    bob.terminate_instances(InstanceIds=[theirs_id])

    hidden = up.koala("admin", "image-private", image)
    assert hidden.returncode == 0 and json.loads(hidden.stdout)["public"] is False, hidden.stdout + hidden.stderr
    with pytest.raises(ClientError) as refused:
        bob.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="m1.small")
    assert refused.value.response["Error"]["Code"] == "InvalidAMIID.NotFound"
    assert image not in {i["ImageId"] for i in bob.describe_images()["Images"]}
    shown = up.koala("admin", "image-public", image)
    assert shown.returncode == 0 and json.loads(shown.stdout)["public"] is True, shown.stdout + shown.stderr
    assert image in {i["ImageId"] for i in bob.describe_images()["Images"]}
    unknown = up.koala("admin", "image-public", "emi-00000000")
    assert unknown.returncode == 1 and "InvalidAMIID.NotFound" in unknown.stderr


def test_sixteen_m1_small_admitted(up: UpCloud) -> None:
    ec2 = up.ec2()
    zones = ec2.describe_availability_zones(ZoneNames=["verbose"])["AvailabilityZones"]
    row = next(z["State"] for z in zones if z["ZoneName"] == "|- m1.small")
    free, _, most = row.split()[:3]
    assert int(most) >= 16 + 3 and int(free) >= 16, row  # two cores, three guests already running
    image = instance(ec2, up.guests["first"])["ImageId"]
    many = ec2.run_instances(ImageId=image, MinCount=16, MaxCount=16, InstanceType="m1.small")["Instances"]
    ids = [i["InstanceId"] for i in many]
    assert len(set(ids)) == 16
    ec2.terminate_instances(InstanceIds=ids)  # admission is what is tested: no need to boot 16 guests here


def test_up_again_changes_nothing_and_down_leaves_guests_to_adopt(up: UpCloud) -> None:
    pids = {role: up.aio.running_pid(role) for role in ("clc", "walrus", "cc", "nc")}
    links = host_snapshot()["link"]
    again = up.koala("up", "--detach")
    assert again.returncode == 0 and "already runs" in again.stdout, again.stdout + again.stderr
    assert {role: up.aio.running_pid(role) for role in pids} == pids
    assert host_snapshot()["link"] >= {line for line in links if up.network.tag in line}
    status = up.koala("status")
    assert status.returncode == 0 and f"namespace {up.network.netns} present" in status.stdout, status.stdout

    ec2, first = up.ec2(), up.guests["first"]
    public = instance(ec2, first)["PublicIpAddress"]
    down = up.koala("down")
    assert down.returncode == 0 and all(up.aio.running_pid(role) is None for role in pids), down.stdout
    # The guests keep running and reachable: their network (router namespace, dnsmasq, links) stays.
    assert up.network.exists()
    assert up.ssh(public, attempts=3).stdout.strip() == first
    back = up.koala("up", "--detach", "--no-image")
    assert back.returncode == 0, back.stdout + back.stderr
    found = instance(ec2, first)
    assert found["State"]["Name"] == "running" and found["PublicIpAddress"] == public, found
    wait_for(lambda: up.ssh(public).stdout.strip() == first, 60, 1, "SSH to the adopted guest")


def test_down_purge_leaves_nothing(up: UpCloud) -> None:
    network = up.network
    instance_path = (up.state / "data" / "nc-node1" / "instances").resolve()
    during = host_snapshot()
    # While up, the host's network differs only by the one link to the public pool and that link's own routes
    # (its /24, and the local table's entries of the host's address on it); no firewall rule at any time.
    added_links = during["link"] - up.before["link"]
    assert len(added_links) == 1 and next(iter(added_links)).startswith(f"{network.host_link}@"), added_links
    assert during["link"] >= up.before["link"], up.before["link"] - during["link"]
    public = ipaddress.IPv4Network(network.public)
    assert during["route"] - up.before["route"] == {
        f"{public} dev {network.host_link} proto kernel scope link src {network.host_ip}",
        f"local {network.host_ip} dev {network.host_link} table local proto kernel scope host src {network.host_ip}",
        f"broadcast {public.broadcast_address} dev {network.host_link} table local proto kernel scope link "
        f"src {network.host_ip}",
    }, during["route"] ^ up.before["route"]
    assert during["route"] >= up.before["route"], up.before["route"] - during["route"]
    assert during["iptables"] == up.before["iptables"], during["iptables"] ^ up.before["iptables"]
    # The guests' taps, the bridge and the libvirtd that made them are in the router namespace.
    daemon = network.libvirtd(up.state)
    assert daemon.running() is not None
    assert set(daemon.virsh("list", "--name").stdout.split()) >= {up.guests["first"], up.guests["second"]}

    purge = up.koala("down", "--purge")
    assert purge.returncode == 0, purge.stdout + purge.stderr
    assert "terminated:" in purge.stdout and "removed network" in purge.stdout, purge.stdout

    assert not network.exists()
    assert daemon.running() is None
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    assert not [p for p in processes if str(up.state) in p or str(instance_path) in p or network.netns in p]
    assert not up.state.exists() or not any(up.state.iterdir())
    assert f" {up.state.resolve()}/" not in Path("/proc/self/mounts").read_text()  # the volumes' XFS unmounted
    assert host_snapshot() == up.before
