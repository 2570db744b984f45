"""The active CLC cut off from PostgreSQL by a firewall rule in its network namespace: it stops (gives up its
leadership) before the standby takes over, the standby serves everything the cut-off one acknowledged, and a
change sent to the cut-off one is not acknowledged and not kept."""

from __future__ import annotations

import ipaddress
import os
import random
import re
import secrets
import subprocess

import boto3
import pytest
from botocore.config import Config

from services.cloud_controller.standby import EXIT_LEADERSHIP_LOST
from tests.clc.ec2_helpers import REGION, Creds, admin_creds
from tests.clc.second_clc import SecondClc, health
from tests.harness import Cloud
from tests.postgres import FAST_SETTINGS, PostgresServer
from tests.waiting import wait_for

pytestmark = pytest.mark.netns


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def link():
    """A namespace for the CLC to be cut off, joined to this host by a veth pair of a free /30."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    while True:
        net = ipaddress.ip_network(
            f"10.{random.randrange(64, 250)}.{random.randrange(0, 255)}.{4 * random.randrange(0, 63)}/30"
        )
        host, guest = (str(a) for a in list(net.hosts())[:2])
        if host not in used and guest not in used:
            break
    tag = secrets.token_hex(3)
    ns, outside, inside = f"kpg{tag}-clc", f"kpg{tag}h", f"kpg{tag}n"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside, "netns", ns)
        sh("ip", "addr", "add", f"{host}/30", "dev", outside)
        sh("ip", "link", "set", outside, "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{guest}/30", "dev", inside)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", inside, "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns, host, guest
    finally:
        subprocess.run(["ip", "link", "del", outside], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture(scope="module")
def server(link):
    _, host, _ = link
    instance = PostgresServer(listen=f"127.0.0.1,{host}", settings=FAST_SETTINGS).start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="module")
def pair(tmp_path_factory, link, server):
    """CLC `a` (active, in the namespace, reaching the database through the veth) and CLC `b` (standby, here)."""
    ns, host, guest = link
    database = server.create_database("partition")
    cloud = Cloud(tmp_path_factory.mktemp("partition") / "cloud", roles=("clc",))
    a = SecondClc(
        cloud,
        "clc-a",
        bind=guest,
        netns=ns,
        state_dir=cloud.dir / "data" / "clc",  # where the harness finds the admin's credentials
        extra={"KOALA_DATABASE_URL": database.replace("127.0.0.1", host)},
    )
    b = SecondClc(cloud, "clc-b", extra={"KOALA_DATABASE_URL": database})
    try:
        a.start_active()
        b.start_standing_by()
        yield cloud, a, b
    finally:
        b.stop()
        a.stop()


def ec2_at(url: str, creds: Creds, timeout: float = 60):
    return boto3.client(
        "ec2",
        endpoint_url=url + "/services/Eucalyptus",
        region_name=REGION,
        aws_access_key_id=creds.access_key,
        aws_secret_access_key=creds.secret_key,
        config=Config(retries={"max_attempts": 1}, read_timeout=timeout, connect_timeout=5),
    )


def test_partitioned_leader_stops_and_the_standby_takes_over(pair, link, server):
    cloud, a, b = pair
    ns, host, _ = link
    creds = admin_creds(cloud)
    ec2_at(a.url, creds).create_key_pair(KeyName="acknowledged-before")
    port = str(server.port)
    sh("ip", "netns", "exec", ns, "iptables", "-A", "OUTPUT", "-p", "tcp", "-d", host, "--dport", port, "-j", "DROP")
    sh("ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-p", "tcp", "-s", host, "--sport", port, "-j", "DROP")

    # A change sent to the cut-off CLC is not acknowledged (it cannot commit, and the process gives up).
    with pytest.raises(Exception):  # noqa: B017 - a dropped connection or an error answer, either way no success
        ec2_at(a.url, creds, timeout=30).create_key_pair(KeyName="sent-while-cut-off")

    assert a.process is not None
    wait_for(lambda: a.process.poll() is not None, 60, what=lambda: f"the cut-off CLC to stop: {a.log()[-1500:]}")
    assert a.process.returncode == EXIT_LEADERSHIP_LOST
    wait_for(lambda: health(b.url) == 200, 60, what=lambda: f"the standby to take over: {b.log()[-1500:]}")

    # The cut-off CLC gave up no later than the standby took over (log stamps are to the second).
    lost = re.search(r"^(\S+) CRITICAL .*leadership lost", a.log(), re.M)
    acquired = re.search(r"^(\S+) INFO .*leadership acquired", b.log(), re.M)
    assert lost and acquired, (a.log()[-1500:], b.log()[-1500:])
    assert lost.group(1) <= acquired.group(1)

    survivor = ec2_at(b.url, creds)
    names = {k["KeyName"] for k in survivor.describe_key_pairs()["KeyPairs"]}
    assert "acknowledged-before" in names and "sent-while-cut-off" not in names
    survivor.create_key_pair(KeyName="after-takeover")  # the new active CLC admits changes
    assert health(a.url) is None  # and the cut-off one is gone, not answering as a second active CLC
