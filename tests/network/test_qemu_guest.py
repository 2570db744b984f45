"""A real QEMU guest (the project's guest test image) behind the CC's MANAGED-NOVLAN router.

The NC (qemu:///system) plugs the guest into a bridge its StartNetwork makes; the bridge is wired to the router
namespace where the CC's network manager applies everything. No config drive: the guest must get its address
from the CC's dnsmasq and its instance id from 169.254.169.254 (the CC's DNAT to a metadata host standing in for
the CLC, answering by source address). From an outside namespace, the guest's SSH server (dropbear) is reached
through its elastic IP while its group authorizes port 22, and no longer once that is revoked.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import shutil
from pathlib import Path

import pytest

from common.messages.cc_nc import (
    Ack,
    ConsoleOutputResponse,
    ImageRef,
    InstanceIdRequest,
    NetConfig,
    StartNetworkRequest,
    VmType,
)
from common.messages.network import NetworkRule
from services.cluster_controller.network.manager import NetworkManager
from services.cluster_controller.network.settings import VnetSettings
from tests.nc.conftest import close_env, make_env
from tests.network.topology import Topology, sh
from tests.waiting import wait_for

pytestmark = [pytest.mark.qemu, pytest.mark.netns]
VM = VmType(name="c1.medium", cores=1, memory_mb=256, disk_gb=1)
NETWORK, VLAN = "111122223333-default", 10
EIP = "10.99.0.70"


def test_qemu_guest_behind_the_cc_router(guest_image: Path, tmp_path: Path) -> None:
    topo = Topology(tmp_path)
    bridge, uplink = f"kq{secrets.token_hex(3)}", f"kqv{secrets.token_hex(3)}"
    instance_id = f"i-{secrets.token_hex(4)}"
    instances = Path(f"/var/tmp/koala-net-qemu-{secrets.token_hex(4)}")  # reachable by the libvirt-qemu user
    instances.mkdir(mode=0o755)
    loop = asyncio.new_event_loop()
    manager = env = None
    try:
        for role in ("out", "cc", "md"):
            topo.add_ns(role)
        topo.veth("out", "eth0", "cc", "pub0")
        topo.run("out", "ip", "addr", "add", "10.99.0.2/24", "dev", "eth0")
        topo.run("cc", "ip", "addr", "add", "10.99.0.1/24", "dev", "pub0")
        topo.veth("cc", "md0", "md", "eth0")
        topo.run("cc", "ip", "addr", "add", "10.98.0.1/30", "dev", "md0")
        topo.run("md", "ip", "addr", "add", "10.98.0.2/30", "dev", "eth0")
        topo.run("md", "ip", "route", "add", "10.214.0.0/16", "via", "10.98.0.1")
        env = make_env(
            tmp_path / "nc",
            {
                "HYPERVISOR": "qemu",
                "KOALA_LIBVIRT_URI": "qemu:///system",
                "INSTANCE_PATH": instances,
                "SWAP_SIZE": 32,
                "MAX_DISK": 0,
                "KOALA_NC_CONFIG_DRIVE": "false",
            },
            domains=[],
        )
        env.cc.call(env.url, "StartNetwork", StartNetworkRequest(bridge=bridge), Ack)  # the node's bridge
        sh("ip", "link", "add", uplink, "type", "veth", "peer", "name", "priv0", "netns", topo.ns("cc"))
        sh("ip", "link", "set", uplink, "master", bridge, "up")
        topo.run("cc", "ip", "link", "set", "priv0", "up")
        settings = VnetSettings(
            VNET_MODE="MANAGED-NOVLAN",
            VNET_SUBNET="10.214.0.0",
            VNET_NETMASK="255.255.0.0",
            VNET_PUBINTERFACE="pub0",
            VNET_PRIVINTERFACE="priv0",
            VNET_PUBLICIPS="10.99.0.70-10.99.0.71",
            VNET_CLOUDIP="10.98.0.2",
            KOALA_VNET_METADATA_PORT=8773,
            KOALA_VNET_NETNS=topo.ns("cc"),
        )
        manager = NetworkManager(settings, tmp_path / "cc")
        loop.run_until_complete(manager.start())
        ssh_rule = NetworkRule(protocol="tcp", from_port=22, to_port=22, cidrs=["10.99.0.0/24"])
        loop.run_until_complete(manager.configure_network(NETWORK, VLAN, [ssh_rule]))
        net = loop.run_until_complete(manager.add_instance(instance_id, NetConfig(vlan=VLAN, network_index=2)))
        loop.run_until_complete(manager.assign_address(EIP, net.private_ip, instance_id))
        topo.spawn("md", "metadata", "8773", f"{net.private_ip}={instance_id}")
        for name, manifest in (("kernel", "guest/kernel"), ("initrd", "guest/initrd"), ("root.img", "guest/root")):
            env.images.add(f"bucket/{manifest}.manifest.xml", guest_image / name)
        env.run(
            instance_id,
            image="emi-0000a001",
            manifest="bucket/guest/root.manifest.xml",
            kernel=ImageRef(id="eki-0000a001", manifest="bucket/guest/kernel.manifest.xml"),
            ramdisk=ImageRef(id="eri-0000a001", manifest="bucket/guest/initrd.manifest.xml"),
            vm_type=VM,
            net=net.model_copy(update={"bridge": bridge}),
        )

        def console() -> str:
            answer = env.cc.call(
                env.url, "GetConsoleOutput", InstanceIdRequest(instance_id=instance_id), ConsoleOutputResponse
            )
            return base64.b64decode(answer.output).decode(errors="replace")

        try:
            wait_for(lambda: f"KOALA-GUEST ready instance={instance_id}" in console(), 180, 0.5, "the ready line")
            text = console()
            assert f"KOALA-GUEST dhcp {net.private_ip}/27" in text  # the CC's DHCP, the group's subnet
            assert f"KOALA-GUEST metadata instance={instance_id}" in text  # through 169.254.169.254
            # dropbear, via the EIP; the ready line can come before the guest's SSH server answers (a loaded host)
            wait_for(lambda: topo.connect("out", EIP, 22, timeout=3).startswith("SSH-2.0-"), 60, 1, "SSH via the EIP")
            loop.run_until_complete(manager.configure_network(NETWORK, VLAN, []))  # revoke
            assert topo.connect("out", EIP, 22) == "TIMEOUT"
        except BaseException:
            print(console()[-3000:])
            raise
    finally:
        if env is not None:
            close_env(env)
        if manager is not None:
            loop.run_until_complete(manager.teardown())
            loop.run_until_complete(manager.stop())
        loop.close()
        topo.cleanup()
        sh("ip", "link", "del", uplink, check=False)
        sh("ip", "link", "del", bridge, check=False)
        shutil.rmtree(instances, ignore_errors=True)
