"""The CLC -> CC network interface (Eucalyptus's StartNetwork, ConfigureNetwork, AssignAddress, ...).

All operations are called by the CLC (role clc). A network is one security group's network, named
`<account>-<group>` as in Eucalyptus, with the VLAN the CLC allocated for it (in MANAGED-NOVLAN the VLAN number
only selects the subnet). ConfigureNetwork carries a network's full rule set: the CC replaces what it had.
Every request is level-triggered and idempotent: sending it twice changes nothing.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

MAX_NETWORKS = 4096
MAX_RULES = 512
MAX_CIDRS = 256
MAX_ADDRESSES = 65536
_NETWORK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@:+=,/-]{0,254}$")
_INSTANCE_ID = re.compile(r"^i-[0-9a-fA-F]{8}$")

Protocol = Literal["tcp", "udp", "icmp", "all"]


def _network_name(value: str) -> str:
    if not _NETWORK_NAME.match(value):
        raise ValueError("a network name is `<account>-<group>`: 1-255 printable characters")
    return value


class NetworkRule(BaseModel):
    """One ingress permission: from CIDR blocks and/or source groups' networks, a protocol and port range.

    For icmp, from_port/to_port are the ICMP type and code (-1: any). For protocol "all" ports are ignored.
    """

    protocol: Protocol = "tcp"
    from_port: int = Field(-1, ge=-1, le=65535)
    to_port: int = Field(-1, ge=-1, le=65535)
    cidrs: list[str] = Field(default=[], max_length=MAX_CIDRS)
    source_networks: list[str] = Field(default=[], max_length=MAX_CIDRS)  # `<account>-<group>` names

    @field_validator("cidrs")
    @classmethod
    def _cidrs(cls, values: list[str]) -> list[str]:
        out = []
        for value in values:
            try:
                out.append(str(ipaddress.IPv4Network(value, strict=False)))
            except ValueError:
                raise ValueError(f"{value!r} is not an IPv4 CIDR block") from None
        return out

    @field_validator("source_networks")
    @classmethod
    def _sources(cls, values: list[str]) -> list[str]:
        return [_network_name(value) for value in values]

    @model_validator(mode="after")
    def _ports(self) -> NetworkRule:
        if self.protocol in ("tcp", "udp"):
            if self.from_port < 0 or self.to_port < 0:
                # -1/-1 means every port, as EC2 reports a group's all-ports rule.
                if (self.from_port, self.to_port) != (-1, -1):
                    raise ValueError("tcp/udp port range needs both ports, or -1 for all")
            elif self.from_port > self.to_port:
                raise ValueError(f"port range {self.from_port}-{self.to_port} ends before it starts")
        elif self.protocol == "icmp" and self.from_port > 255:
            raise ValueError("icmp type must be -1..255")
        if not self.cidrs and not self.source_networks:
            raise ValueError("a rule needs at least one CIDR block or source network")
        return self


class NetworkRef(BaseModel):
    name: str = Field(max_length=255)
    vlan: int = Field(ge=2, le=4095)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _network_name(value)


class StartNetworkRequest(NetworkRef):
    """Make sure the network exists: bridge/VLAN, router address, DHCP subnet, its chain (rules kept)."""


class StopNetworkRequest(NetworkRef):
    """Tear the network down (its chain, router address, DHCP subnet). Its instances lose connectivity."""


class ConfigureNetworkRequest(NetworkRef):
    """The network's complete rule set; starts the network if needed."""

    rules: list[NetworkRule] = Field(default=[], max_length=MAX_RULES)


class NetworkInfo(BaseModel):
    name: str
    vlan: int
    subnet: str = ""  # CIDR, empty in SYSTEM/STATIC
    router: str = ""
    bridge: str = ""  # the CC's device for this network
    rules: list[NetworkRule] = []
    instances: list[str] = []  # instance ids with a DHCP entry in this network


class NetworkResponse(BaseModel):
    network: NetworkInfo


class DescribeNetworksRequest(BaseModel):
    names: list[str] = Field(default=[], max_length=MAX_NETWORKS)  # empty: all


class DescribeNetworksResponse(BaseModel):
    mode: str
    subnet: str = ""
    addrs_per_net: int = 0
    vlan_min: int = 0
    vlan_max: int = 0
    cloud_ip: str = ""
    networks: list[NetworkInfo] = []


class AssignAddressRequest(BaseModel):
    """Map an elastic IP to an instance's private address (DNAT in, SNAT out)."""

    public_ip: str
    private_ip: str = ""  # empty: the CC looks it up from instance_id
    instance_id: str = ""

    @field_validator("public_ip")
    @classmethod
    def _public(cls, value: str) -> str:
        return str(ipaddress.IPv4Address(value))

    @field_validator("private_ip")
    @classmethod
    def _private(cls, value: str) -> str:
        return str(ipaddress.IPv4Address(value)) if value else ""

    @field_validator("instance_id")
    @classmethod
    def _instance(cls, value: str) -> str:
        if value and not _INSTANCE_ID.match(value):
            raise ValueError(f"{value!r} is not an instance id")
        return value.lower()

    @model_validator(mode="after")
    def _target(self) -> AssignAddressRequest:
        if not self.private_ip and not self.instance_id:
            raise ValueError("give private_ip or instance_id")
        return self


class UnassignAddressRequest(BaseModel):
    public_ip: str

    @field_validator("public_ip")
    @classmethod
    def _public(cls, value: str) -> str:
        return str(ipaddress.IPv4Address(value))


class PublicAddress(BaseModel):
    public_ip: str
    private_ip: str = ""  # empty: free
    instance_id: str = ""


class DescribePublicAddressesResponse(BaseModel):
    supported: bool  # false outside the MANAGED modes
    addresses: list[PublicAddress] = Field(default=[], max_length=MAX_ADDRESSES)


class AddressResponse(BaseModel):
    address: PublicAddress
