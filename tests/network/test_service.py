"""The CC service's network operations over signed RPC, applied for real in namespaces: the CC process runs
with KOALA_VNET_NETNS pointing at the router namespace. Start/Configure/Assign/Describe/Unassign/Stop, refusals
in the API's format, and the network restored from the CC's database after the CC is killed and restarted."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest
from pydantic import BaseModel, ConfigDict

from common import pki
from common.messages import network as m
from common.rpc import RpcClient, RpcError
from common.signing import Identity, TrustStore
from tests.harness import Cloud
from tests.network.topology import Topology

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

WEB = "111122223333-web"
EIP = "10.99.0.51"
GUEST_IP = "192.168.1.2"  # vlan 10, index 2


class Raw(BaseModel):
    """Any JSON body, to send what the real models would refuse to build."""

    model_config = ConfigDict(extra="allow")


class Env:
    def __init__(self, cloud: Cloud, topo: Topology):
        self.cloud, self.topo = cloud, topo

    def call(self, op: str, msg, answer, role: str = "clc"):  # role: the id of a certificate in the PKI
        async def go():
            pki_dir = self.cloud.aio.pki
            client = RpcClient(
                Identity.from_files(pki_dir.cert_path(role), pki_dir.key_path(role)),
                TrustStore(pki.load_cert(pki_dir.ca_path)),
                timeout=10.0,
                retries=0,
            )
            try:
                return await client.call(self.cloud.url("cc"), op, msg, answer)
            finally:
                await client.close()

        return asyncio.run(go())


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("ccnet")
    topo = Topology(work)
    cloud = None
    try:
        for role in ("out", "cc", "g1"):
            topo.add_ns(role)
        topo.veth("out", "eth0", "cc", "pub0")
        topo.run("out", "ip", "addr", "add", "10.99.0.2/24", "dev", "eth0")
        topo.run("cc", "ip", "addr", "add", "10.99.0.1/24", "dev", "pub0")
        topo.veth("cc", "priv0", "g1", "eth0")  # a guest wired straight to the router (no node needed here)
        topo.run("g1", "ip", "addr", "add", f"{GUEST_IP}/27", "dev", "eth0")
        topo.run("g1", "ip", "route", "add", "default", "via", "192.168.1.1")
        topo.spawn("g1", "serve", "g1", "80", "22")
        settings = {
            "VNET_MODE": "MANAGED-NOVLAN",
            "VNET_SUBNET": "192.168.0.0",
            "VNET_NETMASK": "255.255.0.0",
            "VNET_ADDRSPERNET": 32,
            "VNET_PUBINTERFACE": "pub0",
            "VNET_PRIVINTERFACE": "priv0",
            "VNET_PUBLICIPS": "10.99.0.50-10.99.0.53",
            "VNET_CLOUDIP": "10.98.0.2",
            "KOALA_VNET_NETNS": topo.ns("cc"),
        }
        cloud = Cloud(work / "cloud", roles=("cc",), extra={"cc": settings})
        cloud.start("cc")
        yield Env(cloud, topo)
    finally:
        if cloud is not None:
            cloud.stop()
        topo.cleanup()


def test_operations_configure_the_router(env: Env) -> None:
    described = env.call("DescribeNetworks", m.DescribeNetworksRequest(), m.DescribeNetworksResponse)
    assert (described.mode, described.subnet, described.vlan_min, described.vlan_max) == (
        "MANAGED-NOVLAN",
        "192.168.0.0/16",
        2,
        2049,
    )
    started = env.call("StartNetwork", m.StartNetworkRequest(name=WEB, vlan=10), m.NetworkResponse).network
    assert (started.subnet, started.router) == ("192.168.1.0/27", "192.168.1.1")
    rule = m.NetworkRule(protocol="tcp", from_port=80, to_port=80, cidrs=["10.99.0.0/24"])
    env.call("ConfigureNetwork", m.ConfigureNetworkRequest(name=WEB, vlan=10, rules=[rule]), m.NetworkResponse)
    env.call("AssignAddress", m.AssignAddressRequest(public_ip=EIP, private_ip=GUEST_IP), m.AddressResponse)
    assert env.topo.connect("out", EIP, 80) == "10.99.0.2 g1"
    assert env.topo.connect("out", EIP, 22) == "TIMEOUT"
    public = env.call("DescribePublicAddresses", None, m.DescribePublicAddressesResponse)
    assert public.supported and [(a.public_ip, a.private_ip) for a in public.addresses if a.private_ip] == [
        (EIP, GUEST_IP)
    ]
    networks = env.call("DescribeNetworks", m.DescribeNetworksRequest(names=[WEB]), m.DescribeNetworksResponse)
    assert [(n.name, n.vlan, n.rules) for n in networks.networks] == [(WEB, 10, [rule])]


def test_refusals_are_clear(env: Env) -> None:
    cases = [
        ("StartNetwork", m.StartNetworkRequest(name="111122223333-big", vlan=3000), 400, "InvalidParameterValue"),
        ("StartNetwork", m.StartNetworkRequest(name="111122223333-other", vlan=10), 409, "NetworkConflict"),
        ("AssignAddress", m.AssignAddressRequest(public_ip="10.99.0.99", private_ip=GUEST_IP), 400, "InvalidAddress"),
        ("AssignAddress", m.AssignAddressRequest(public_ip=EIP, instance_id="i-12345678"), 400, "InvalidInstanceID"),
    ]
    for op, msg, status, code in cases:
        with pytest.raises(RpcError) as caught:
            env.call(op, msg, m.NetworkResponse)
        assert caught.value.status == status and caught.value.code.startswith(code), caught.value
    with pytest.raises(RpcError) as caught:  # malformed JSON fields: the RPC layer's 400
        bad = Raw(name=WEB, vlan=10, rules=[{"protocol": "gre", "cidrs": ["0.0.0.0/0"]}])
        env.call("ConfigureNetwork", bad, m.NetworkResponse)
    assert caught.value.status == 400
    with pytest.raises(RpcError) as caught:  # only the CLC configures networks
        env.call("StartNetwork", m.StartNetworkRequest(name=WEB, vlan=10), m.NetworkResponse, role="nc-node1")
    assert caught.value.status == 403
    assert env.call("DescribeNetworks", m.DescribeNetworksRequest(), m.DescribeNetworksResponse, role="koala-admin")


def test_cc_restart_restores_the_network_from_its_database(env: Env) -> None:
    env.cloud.kill("cc")
    # The router loses Koala's state, as after a reboot: every KOALA chain and hook, and the elastic IP.
    saved = env.topo.run("cc", "iptables-save").stdout
    kept = "\n".join(line for line in saved.splitlines() if "KOALA" not in line) + "\n"
    env.topo.run("cc", "iptables-restore", input=kept)
    env.topo.run("cc", "ip", "addr", "del", f"{EIP}/32", "dev", "pub0")
    assert env.topo.connect("out", EIP, 80) != "10.99.0.2 g1"
    env.cloud.start("cc")
    assert env.topo.connect("out", EIP, 80) == "10.99.0.2 g1"
    env.call("UnassignAddress", m.UnassignAddressRequest(public_ip=EIP), m.AddressResponse)
    assert env.topo.connect("out", EIP, 80) != "10.99.0.2 g1"
    stopped = env.call("StopNetwork", m.StopNetworkRequest(name=WEB, vlan=10), m.NetworkResponse).network
    assert stopped.name == WEB
    assert "KOALA-G10" not in env.topo.run("cc", "iptables-save").stdout
    assert "192.168.1.1/27" not in env.topo.run("cc", "ip", "-4", "addr").stdout
