"""The whole cloud with MANAGED-NOVLAN networking: real CLC (EC2 API through boto3, security groups, elastic
IPs, the metadata service), Walrus, CC and NC processes (libvirt's test driver), the CC applying its network in a
router namespace. A namespace standing in for the guest is plugged into the node's bridge with the instance's
MAC: it gets its address by DHCP, reaches the real CLC's metadata at 169.254.169.254 and gets its own instance
id, and is reachable through its elastic IP only on the ports its group authorizes.

The CLC listens on all addresses for this test and the host routes the guests' subnet to the router namespace
(a route on the test's own veth, gone with it), so metadata requests keep the guest's source address.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from tests.clc.compute_cloud import bundle_and_upload, wait_state, wait_zone_ready
from tests.clc.ec2_helpers import admin_creds, client, stop_clean
from tests.harness import Cloud
from tests.network.topology import Topology, sh
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]
HOST_IP, ROUTER_UP = "10.97.0.1", "10.97.0.2"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cloud, Topology]]:
    work = tmp_path_factory.mktemp("fullnet")
    topo = Topology(work)
    host_if = "kh" + secrets.token_hex(3)
    cloud = None
    try:
        for role in ("out", "cc", "n1", "g1"):
            topo.add_ns(role)
        topo.veth("out", "eth0", "cc", "pub0")
        topo.run("out", "ip", "addr", "add", "10.99.0.2/24", "dev", "eth0")
        topo.run("cc", "ip", "addr", "add", "10.99.0.1/24", "dev", "pub0")
        topo.veth("cc", "priv0", "n1", "eth0")
        topo.run("n1", "ip", "link", "add", "br0", "type", "bridge")
        topo.run("n1", "ip", "link", "set", "eth0", "master", "br0")
        topo.run("n1", "ip", "link", "set", "br0", "up")
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "up0", "netns", topo.ns("cc"))
        sh("ip", "addr", "add", f"{HOST_IP}/30", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        topo.run("cc", "ip", "addr", "add", f"{ROUTER_UP}/30", "dev", "up0")
        topo.run("cc", "ip", "link", "set", "up0", "up")
        sh("ip", "route", "add", "10.213.0.0/16", "via", ROUTER_UP, "dev", host_if)
        cc = {
            "VNET_MODE": "MANAGED-NOVLAN",
            "VNET_SUBNET": "10.213.0.0",
            "VNET_NETMASK": "255.255.0.0",
            "VNET_ADDRSPERNET": 32,
            "VNET_PUBINTERFACE": "pub0",
            "VNET_PRIVINTERFACE": "priv0",
            "VNET_PUBLICIPS": "10.99.0.60-10.99.0.63",
            "VNET_CLOUDIP": HOST_IP,
            "KOALA_VNET_NETNS": topo.ns("cc"),
        }
        cloud = Cloud(work / "cloud", extra={"cc": cc, "clc": {"KOALA_AUTO_PUBLIC_IP": "false"}})
        clc_conf = cloud.aio.conf_path("clc")
        port = cloud.aio.endpoints()["clc"].port
        with clc_conf.open("a") as conf:  # reachable from the router namespace; users still use loopback
            conf.write(f'KOALA_BIND="0.0.0.0"\nKOALA_CLC_PUBLIC_URL="http://127.0.0.1:{port}"\n')
        cloud.start()
        yield cloud, topo
    finally:
        if cloud is not None:
            stop_clean(cloud)
        topo.cleanup()
        sh("ip", "link", "del", host_if, check=False)


def test_guest_gets_dhcp_metadata_and_its_elastic_ip(stack: tuple[Cloud, Topology], tmp_path) -> None:
    cloud, topo = stack
    creds = admin_creds(cloud)
    ec2 = client(cloud, creds)
    location = bundle_and_upload(cloud, tmp_path / "bundle", "machine", "netimg")
    image = ec2.register_image(ImageLocation=location, Name="net-image")["ImageId"]
    wait_zone_ready(cloud, creds)
    ec2.create_security_group(GroupName="web", Description="web servers")
    ec2.authorize_security_group_ingress(GroupName="web", IpProtocol="tcp", FromPort=80, ToPort=80, CidrIp="0.0.0.0/0")
    reservation = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, SecurityGroups=["web"])
    instance_id = reservation["Instances"][0]["InstanceId"]
    found = wait_state(ec2, [instance_id], {"running"})[instance_id]
    private_ip = found["PrivateIpAddress"]
    assert private_ip.startswith("10.213.")
    # The guest: a namespace on the node's bridge with the instance's MAC (d0:0d: and its id's hex digits).
    mac = "d0:0d:" + ":".join(instance_id[2:][i : i + 2] for i in range(0, 8, 2))
    topo.veth("n1", "vg1", "g1", "eth0", mac_b=mac)
    topo.run("n1", "ip", "link", "set", "vg1", "master", "br0")
    assert topo.dhcp("g1")["ip"] == private_ip
    meta = topo.get("g1", "http://169.254.169.254/latest/meta-data/instance-id")
    assert meta == instance_id
    assert topo.get("g1", "http://169.254.169.254/latest/meta-data/local-ipv4") == private_ip
    # Its elastic IP, through the group's rules.
    topo.spawn("g1", "serve", "g1", "80", "22")
    public_ip = ec2.allocate_address()["PublicIp"]
    ec2.associate_address(InstanceId=instance_id, PublicIp=public_ip)
    wait_for(lambda: topo.connect("out", public_ip, 80) == "10.99.0.2 g1", 10, 0.1, "the elastic IP answering")
    assert topo.connect("out", public_ip, 80) == "10.99.0.2 g1"
    assert topo.connect("out", public_ip, 22) == "TIMEOUT"
    ec2.revoke_security_group_ingress(GroupName="web", IpProtocol="tcp", FromPort=80, ToPort=80, CidrIp="0.0.0.0/0")
    wait_for(lambda: topo.connect("out", public_ip, 80) == "TIMEOUT", 10, 0.1, "the revoked port closed")
    assert topo.connect("out", public_ip, 80) == "TIMEOUT"
    ec2.terminate_instances(InstanceIds=[instance_id])
