"""The VNET_* settings of eucalyptus.conf, validated at start (a mixin of the CC's configuration).

Eucalyptus's four modes: SYSTEM (guests bridged onto VNET_BRIDGE, DHCP outside the cloud), STATIC (VNET_MACMAP
pairs served by the CC's DHCP server), MANAGED (a VLAN and a subnet per security group, the CC routes, filters,
NATs and serves DHCP) and MANAGED-NOVLAN (the same without VLAN tags).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, Field, field_validator, model_validator

VnetMode = Literal["SYSTEM", "STATIC", "MANAGED", "MANAGED-NOVLAN"]
MANAGED_MODES = frozenset({"MANAGED", "MANAGED-NOVLAN"})
MAX_PUBLIC_IPS = 65536
MAX_MACMAP = 4096
_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,14}$")
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_NETNS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class VnetError(ValueError):
    """A VNET_* setting (or a network request) that cannot work, with the reason."""


def parse_public_ips(text: str, limit: int = MAX_PUBLIC_IPS) -> list[ipaddress.IPv4Address]:
    """VNET_PUBLICIPS: space- or comma-separated single addresses, ranges `A-B` and CIDR blocks, in order."""
    found: dict[ipaddress.IPv4Address, None] = {}
    for item in text.replace(",", " ").split():
        try:
            if "-" in item:
                first_text, last_text = item.split("-", 1)
                first = ipaddress.IPv4Address(first_text)
                last = ipaddress.IPv4Address(last_text) if "." in last_text else None
                if last is None:  # "10.0.0.5-20": the last octet only
                    last = ipaddress.IPv4Address(f"{first_text.rsplit('.', 1)[0]}.{last_text}")
                if last < first:
                    raise VnetError(f"VNET_PUBLICIPS: range {item} ends before it starts")
                if int(last) - int(first) >= limit:
                    raise VnetError(f"VNET_PUBLICIPS: more than {limit} addresses")
                addresses = [ipaddress.IPv4Address(n) for n in range(int(first), int(last) + 1)]
            elif "/" in item:
                block = ipaddress.IPv4Network(item, strict=False)
                if block.num_addresses > limit:
                    raise VnetError(f"VNET_PUBLICIPS: more than {limit} addresses")
                addresses = list(block.hosts()) if block.prefixlen < 31 else list(block)
            else:
                addresses = [ipaddress.IPv4Address(item)]
        except ValueError as err:
            if isinstance(err, VnetError):
                raise
            raise VnetError(f"VNET_PUBLICIPS: {item!r} is not an address, range or CIDR block") from None
        for address in addresses:
            found[address] = None
        if len(found) > limit:
            raise VnetError(f"VNET_PUBLICIPS: more than {limit} addresses")
    return list(found)


def parse_macmap(text: str) -> list[tuple[str, ipaddress.IPv4Address]]:
    """VNET_MACMAP: `MAC=IP` pairs separated by spaces (STATIC mode). MACs are returned lowercase."""
    pairs: list[tuple[str, ipaddress.IPv4Address]] = []
    macs: set[str] = set()
    ips: set[ipaddress.IPv4Address] = set()
    for item in text.split():
        mac, sep, ip_text = item.partition("=")
        if not sep or not _MAC.match(mac):
            raise VnetError(f"VNET_MACMAP: {item!r} is not MAC=IP")
        try:
            ip = ipaddress.IPv4Address(ip_text)
        except ValueError:
            raise VnetError(f"VNET_MACMAP: {ip_text!r} is not an IPv4 address") from None
        mac = mac.lower()
        if mac in macs or ip in ips:
            raise VnetError(f"VNET_MACMAP: {item} repeats a MAC or an address")
        macs.add(mac)
        ips.add(ip)
        pairs.append((mac, ip))
        if len(pairs) > MAX_MACMAP:
            raise VnetError(f"VNET_MACMAP: more than {MAX_MACMAP} pairs")
    return pairs


def _ip(name: str, value: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise VnetError(f"{name}: {value!r} is not an IPv4 address") from None


# The settings are immutable, and these are asked for on every apply: parse them once.
@functools.lru_cache(maxsize=16)
def _network(subnet: str, netmask: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"{subnet}/{netmask}")


@functools.lru_cache(maxsize=16)
def _public_ips(text: str) -> list[ipaddress.IPv4Address]:
    return parse_public_ips(text)


@functools.lru_cache(maxsize=16)
def _public_pool(text: str) -> frozenset[ipaddress.IPv4Address]:
    return frozenset(parse_public_ips(text))


class VnetSettings(BaseModel):
    """VNET_* keys (names as in Eucalyptus's eucalyptus.conf) plus Koala's own network keys."""

    VNET_MODE: VnetMode = Field(
        "SYSTEM", description="SYSTEM, STATIC, MANAGED or MANAGED-NOVLAN (Eucalyptus's networking modes)."
    )
    VNET_PUBINTERFACE: str = Field(
        "", description="CC: the interface facing the public network (elastic IPs are added to it)."
    )
    VNET_PRIVINTERFACE: str = Field(
        "", description="CC: the interface facing the nodes (router addresses, DHCP; VLAN parent in MANAGED)."
    )
    VNET_BRIDGE: str = Field("", description="SYSTEM/STATIC: the bridge guests are plugged into on the nodes.")
    VNET_SUBNET: str = Field("", description="MANAGED*: the private network all security-group subnets come from.")
    VNET_NETMASK: str = Field("", description="Netmask of VNET_SUBNET (STATIC: of the static subnet).")
    VNET_ADDRSPERNET: int = Field(
        32, description="MANAGED*: addresses per security-group subnet (a power of two, 16 to 2048)."
    )
    VNET_DNS: str = Field("", description="DNS server address handed to guests by DHCP (space-separated list).")
    VNET_PUBLICIPS: str = Field(
        "", description="MANAGED*: public addresses for elastic IPs: singles, ranges A-B and CIDR blocks."
    )
    VNET_CLOUDIP: str = Field(
        "",
        description="MANAGED*: the CLC's address, target of the metadata redirect. Requests keep the guest's source "
        "address (the CLC tells instances apart by it), so the CLC's host must route VNET_SUBNET via the CC.",
    )
    VNET_BROADCAST: str = Field("", description="STATIC: broadcast address handed to guests (default derived).")
    VNET_ROUTER: str = Field("", description="STATIC: the router handed to guests by DHCP.")
    VNET_MACMAP: str = Field("", description="STATIC: `MAC=IP` pairs, one per guest slot, space-separated.")
    VNET_DHCPDAEMON: str = Field("dnsmasq", description="The DHCP server program (dnsmasq from Debian).")
    VNET_DHCPUSER: str = Field("root", description="The user the DHCP server runs as.")
    KOALA_VNET_NETNS: str = Field(
        "",
        description="Run every network command inside this network namespace (`ip netns exec`); for tests and "
        "for a CC that shares its host with other routers. Empty: the CC's own namespace.",
    )
    KOALA_VNET_METADATA_PORT: int = Field(
        0, ge=0, le=65535, description="CLC port of the metadata redirect; 0: the port of KOALA_CLC_URL (8773)."
    )
    KOALA_VNET_RECONCILE_SECONDS: float = Field(
        30.0, gt=0, description="How often the CC re-checks the applied network state against the desired one."
    )

    # Checks of one key alone, so the error names the key's line; the mode's needs are checked below.
    @field_validator("VNET_PUBINTERFACE", "VNET_PRIVINTERFACE", "VNET_BRIDGE")
    @classmethod
    def _ifname(cls, value: str) -> str:
        if value and not _IFNAME.match(value):
            raise ValueError(f"{value!r} is not an interface name (1-15 of A-Z a-z 0-9 _ . : -)")
        return value

    @field_validator("VNET_SUBNET", "VNET_NETMASK", "VNET_CLOUDIP", "VNET_ROUTER", "VNET_BROADCAST")
    @classmethod
    def _address(cls, value: str) -> str:
        if value:
            try:
                ipaddress.IPv4Address(value)
            except ValueError:
                raise ValueError(f"{value!r} is not an IPv4 address") from None
        return value

    @field_validator("VNET_DNS")
    @classmethod
    def _dns(cls, value: str) -> str:
        for item in value.replace(",", " ").split():
            _ip("VNET_DNS", item)
        return value

    @field_validator("VNET_ADDRSPERNET")
    @classmethod
    def _addrs_per_net(cls, value: int) -> int:
        if value < 16 or value > 2048 or value & (value - 1):
            raise ValueError(f"{value} is not a power of two from 16 to 2048")
        return value

    @field_validator("VNET_PUBLICIPS")
    @classmethod
    def _public_ips(cls, value: str) -> str:
        parse_public_ips(value)
        return value

    @field_validator("VNET_MACMAP")
    @classmethod
    def _macmap(cls, value: str) -> str:
        parse_macmap(value)
        return value

    @model_validator(mode="after")
    def _check_vnet(self) -> VnetSettings:
        try:
            self.vnet_validate()
        except VnetError as err:
            raise ValueError(str(err)) from None
        return self

    # --- derived values -------------------------------------------------------------------------------
    @property
    def managed(self) -> bool:
        return self.VNET_MODE in MANAGED_MODES

    @property
    def vnet_subnet(self) -> ipaddress.IPv4Network:
        return _network(self.VNET_SUBNET, self.VNET_NETMASK)

    def public_ips(self) -> list[ipaddress.IPv4Address]:
        return list(_public_ips(self.VNET_PUBLICIPS))

    def public_pool(self) -> frozenset[ipaddress.IPv4Address]:
        return _public_pool(self.VNET_PUBLICIPS)

    def dns_servers(self) -> list[ipaddress.IPv4Address]:
        return [_ip("VNET_DNS", item) for item in self.VNET_DNS.replace(",", " ").split()]

    def metadata_port(self) -> int:
        if self.KOALA_VNET_METADATA_PORT:
            return self.KOALA_VNET_METADATA_PORT
        url = getattr(self, "KOALA_CLC_URL", "") or ""
        try:
            return urlparse(url).port or 8773
        except ValueError:
            return 8773

    # --- validation ----------------------------------------------------------------------------------
    def vnet_validate(self) -> None:
        for key in ("VNET_PUBINTERFACE", "VNET_PRIVINTERFACE", "VNET_BRIDGE"):
            value = getattr(self, key)
            if value and not _IFNAME.match(value):
                raise VnetError(f"{key}: {value!r} is not an interface name (1-15 of A-Z a-z 0-9 _ . : -)")
        if self.KOALA_VNET_NETNS and not _NETNS.match(self.KOALA_VNET_NETNS):
            raise VnetError(f"KOALA_VNET_NETNS: {self.KOALA_VNET_NETNS!r} is not a namespace name")
        if "/" in self.VNET_DHCPDAEMON and not self.VNET_DHCPDAEMON.startswith("/"):
            raise VnetError("VNET_DHCPDAEMON: give a program name or an absolute path")
        self.dns_servers()
        if self.managed:
            self._validate_managed()
        elif self.VNET_MODE == "STATIC":
            self._validate_static()

    def _subnet(self) -> ipaddress.IPv4Network:
        if not self.VNET_SUBNET or not self.VNET_NETMASK:
            raise VnetError(f"{self.VNET_MODE} needs VNET_SUBNET and VNET_NETMASK")
        _ip("VNET_SUBNET", self.VNET_SUBNET)
        try:
            return ipaddress.IPv4Network(f"{self.VNET_SUBNET}/{self.VNET_NETMASK}")
        except ValueError:
            raise VnetError(
                f"VNET_SUBNET/VNET_NETMASK: {self.VNET_SUBNET}/{self.VNET_NETMASK} is not a network "
                "(bad mask, or host bits set)"
            ) from None

    def _validate_managed(self) -> None:
        subnet = self._subnet()
        n = self.VNET_ADDRSPERNET
        if n < 16 or n > 2048 or n & (n - 1):
            raise VnetError(f"VNET_ADDRSPERNET: {n} is not a power of two from 16 to 2048")
        if subnet.num_addresses < 2 * n:
            raise VnetError(f"VNET_SUBNET {subnet} holds fewer than two networks of {n} addresses")
        for key in ("VNET_PUBINTERFACE", "VNET_PRIVINTERFACE"):
            if not getattr(self, key):
                raise VnetError(f"{self.VNET_MODE} needs {key}")
        if not self.VNET_CLOUDIP:
            raise VnetError(f"{self.VNET_MODE} needs VNET_CLOUDIP (the metadata redirect's target)")
        _ip("VNET_CLOUDIP", self.VNET_CLOUDIP)
        for address in self.public_ips():
            if address in subnet:
                raise VnetError(f"VNET_PUBLICIPS: {address} lies inside VNET_SUBNET {subnet}")

    def _validate_static(self) -> None:
        subnet = self._subnet()
        if not self.VNET_MACMAP:
            raise VnetError("STATIC needs VNET_MACMAP")
        if not self.VNET_PRIVINTERFACE:
            raise VnetError("STATIC needs VNET_PRIVINTERFACE (where the CC serves DHCP)")
        for _, ip in parse_macmap(self.VNET_MACMAP):
            if ip not in subnet:
                raise VnetError(f"VNET_MACMAP: {ip} is outside VNET_SUBNET {subnet}")
        for key in ("VNET_ROUTER", "VNET_BROADCAST"):
            value = getattr(self, key)
            if value and _ip(key, value) not in subnet:
                raise VnetError(f"{key}: {value} is outside VNET_SUBNET {subnet}")
