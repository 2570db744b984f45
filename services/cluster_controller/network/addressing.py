"""Address arithmetic of Eucalyptus's MANAGED modes (net/vnetwork.c), as pure functions.

With n = VNET_ADDRSPERNET, the network of VLAN v is `SUBNET + (v - 2) * n`: its router is the first address
after the network address, its broadcast the last, and guests take host indexes 2 .. n - 2.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from services.cluster_controller.network.settings import VnetError

MIN_VLAN = 2
MAX_VLAN = 4095
_INSTANCE = re.compile(r"^i-([0-9a-fA-F]{8})$")


@dataclass(frozen=True)
class Subnet:
    vlan: int
    network: ipaddress.IPv4Network

    @property
    def router(self) -> ipaddress.IPv4Address:
        return self.network.network_address + 1

    @property
    def broadcast(self) -> ipaddress.IPv4Address:
        return self.network.broadcast_address

    @property
    def first_host_index(self) -> int:
        return 2

    @property
    def last_host_index(self) -> int:
        return self.network.num_addresses - 2

    def host(self, index: int) -> ipaddress.IPv4Address:
        if not self.first_host_index <= index <= self.last_host_index:
            raise VnetError(
                f"network index {index} is outside {self.first_host_index}..{self.last_host_index} "
                f"of VLAN {self.vlan}'s subnet {self.network}"
            )
        return self.network.network_address + index


def max_vlan(subnet: ipaddress.IPv4Network, addrs_per_net: int) -> int:
    return min(MAX_VLAN, MIN_VLAN + subnet.num_addresses // addrs_per_net - 1)


def subnet_for_vlan(subnet: ipaddress.IPv4Network, addrs_per_net: int, vlan: int) -> Subnet:
    """The subnet of VLAN `vlan`: SUBNET + (vlan - 2) * n, n addresses long."""
    top = max_vlan(subnet, addrs_per_net)
    if not MIN_VLAN <= vlan <= top:
        raise VnetError(f"VLAN {vlan} is outside {MIN_VLAN}..{top}, the networks {subnet} holds")
    start = subnet.network_address + (vlan - MIN_VLAN) * addrs_per_net
    return Subnet(vlan, ipaddress.IPv4Network(f"{start}/{32 - addrs_per_net.bit_length() + 1}"))


def mac_for_instance(instance_id: str) -> str:
    """Eucalyptus's MAC scheme: d0:0d: and the 8 hex digits of the instance id (lowercase here)."""
    match = _INSTANCE.match(instance_id)
    if not match:
        raise VnetError(f"{instance_id!r} is not an instance id (i- and 8 hex digits)")
    digits = match.group(1).lower()
    return "d0:0d:" + ":".join(digits[i : i + 2] for i in range(0, 8, 2))
