"""The all-in-one network's choices and settings, without building anything: names fit the kernel's limit, the
CC and NC accept the settings it writes, blocks the host already routes are never picked, the choice is kept."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest

from cli.cloud_network import PRIVATE_RANGE, PUBLIC_RANGE, CloudNetwork, CloudNetworkError, host_routes
from services.cluster_controller.network.settings import VnetSettings
from services.node_controller.network import NodeVnetSettings


def test_names_addresses_and_settings_the_services_accept(tmp_path: Path) -> None:
    network = CloudNetwork.choose(tmp_path, "198.18.7.0/24", "100.99.0.0/16")
    assert all(len(name) <= 15 for name in (*network.links, "pub0", "priv0"))  # IFNAMSIZ
    assert (network.host_ip, network.router_ip) == ("198.18.7.1", "198.18.7.2")
    cc = VnetSettings(**network.cc_settings())
    assert cc.managed and cc.VNET_MODE == "MANAGED-NOVLAN" and cc.KOALA_VNET_NETNS == network.netns
    pool = cc.public_ips()
    assert pool[0] == ipaddress.IPv4Address("198.18.7.3") and pool[-1] == ipaddress.IPv4Address("198.18.7.254")
    assert cc.vnet_subnet == ipaddress.IPv4Network("100.99.0.0/16")
    assert cc.VNET_CLOUDIP == network.router_ip  # the CLC's metadata socket is inside the namespace
    nc = NodeVnetSettings(**network.nc_settings(tmp_path))
    assert nc.VNET_BRIDGE == cc.VNET_PRIVINTERFACE and nc.KOALA_VNET_NETNS == network.netns  # the bridge is in there
    assert network.links == (network.host_link,)  # the host's one link
    # Another state directory, another cloud: no name in common.
    other = CloudNetwork.choose(tmp_path / "other", "198.18.8.0/24", "100.98.0.0/16")
    assert not set(other.links) & set(network.links) and other.netns != network.netns


def test_free_blocks_only_and_the_choice_is_kept(tmp_path: Path) -> None:
    taken = asyncio.run(host_routes())
    chosen = CloudNetwork.choose(tmp_path)
    public, private = ipaddress.IPv4Network(chosen.public), ipaddress.IPv4Network(chosen.private)
    assert public.subnet_of(PUBLIC_RANGE) and private.subnet_of(PRIVATE_RANGE)
    assert not [route for route in taken if route.overlaps(public) or route.overlaps(private)]
    chosen.save(tmp_path)
    assert CloudNetwork.choose(tmp_path, "198.18.9.0/24") == chosen  # a later `koala up` rebuilds the same


def test_refused_choices(tmp_path: Path) -> None:
    with pytest.raises(CloudNetworkError, match="overlaps the private subnet"):
        CloudNetwork.choose(tmp_path, "100.64.0.0/24", "100.64.0.0/16")
    with pytest.raises(CloudNetworkError, match="at least 8 addresses"):
        CloudNetwork.choose(tmp_path, "198.18.7.0/30", "100.99.0.0/16")
    routed = next((r for r in asyncio.run(host_routes()) if r.prefixlen <= 29), None)
    if routed is not None:  # a block the host already routes (its own LAN, another cloud's link)
        with pytest.raises(CloudNetworkError, match="overlaps the host's routes"):
            CloudNetwork.choose(tmp_path, str(routed), "100.99.0.0/16")
    with pytest.raises(ValueError):
        CloudNetwork.choose(tmp_path, "not-a-network")
