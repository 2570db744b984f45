"""What a remote zone creates in the remote cloud besides instances, under per-cloud names:

- key pairs: the instance's public key imported as `<prefix>-key-<sha256 of the key, 20 hex>` (the same key of any
  number of local accounts is imported once, and a changed key gets a new name);
- security groups: one remote group per local network (security group `<account>-<group>`), named
  `<prefix>-<account>-<group>`, holding the local group's rule set as the CLC gave it (ConfigureNetwork).

Both are deleted once no live instance of this zone uses them (sweep, from the poll loop)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from typing import Any

from common.messages.network import NetworkRule
from services.cluster_controller.remote.ec2 import Ec2Client, RemoteRefused

log = logging.getLogger("koala.cc.remote")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
Permission = tuple[str, int, int, str]  # (protocol, from, to, CIDR or remote group name)


class RemoteResources:
    def __init__(self, ec2: Ec2Client, prefix: str):
        self.ec2, self.prefix = ec2, prefix
        self.rules: dict[str, list[NetworkRule]] = {}  # local network name -> its rule set (from the store)
        self._applied: dict[str, frozenset[Permission]] = {}  # what the remote group holds, as last set
        self._keys: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}

    # --- names ----------------------------------------------------------------------------------------
    def key_name(self, public_key: str) -> str:
        digest = hashlib.sha256(public_key.strip().encode()).hexdigest()[:20]
        return f"{self.prefix}-key-{digest}"

    def group_name(self, network: str) -> str:
        return f"{self.prefix}-{_UNSAFE.sub('_', network)}"[:255]

    def ours(self, name: str) -> bool:
        return name.startswith(self.prefix + "-")

    # --- key pairs ------------------------------------------------------------------------------------
    async def ensure_key(self, public_key: str) -> str:
        name = self.key_name(public_key)
        if name in self._keys:
            return name
        try:
            await self.ec2.call("ImportKeyPair", {"KeyName": name, "PublicKeyMaterial": public_key.strip().encode()})
            log.info("key pair %s imported remotely", name)
        except RemoteRefused as err:
            if err.code != "InvalidKeyPair.Duplicate":
                raise
        self._keys.add(name)
        return name

    def ready(self, public_key: str, networks: list[str]) -> tuple[str, list[str]] | None:
        """The key pair's and the networks' remote names when all are there as wanted already (no call to make,
        no await), else None: a launch then sends its RunInstances without giving up the event loop first."""
        key = self.key_name(public_key) if public_key else ""
        if key and key not in self._keys:
            return None
        names = [self.group_name(n) for n in networks]
        for name, network in zip(names, networks, strict=True):
            if self._applied.get(name) != self.permissions(self.rules.get(network, [])):
                return None
        return key, names

    # --- security groups ----------------------------------------------------------------------------------
    def permissions(self, rules: list[NetworkRule]) -> frozenset[Permission]:
        wanted: set[Permission] = set()
        for rule in rules:
            protocol = "-1" if rule.protocol == "all" else rule.protocol
            ports = (-1, -1) if protocol == "-1" else (rule.from_port, rule.to_port)
            for cidr in rule.cidrs:
                wanted.add((protocol, *ports, cidr))
            for source in rule.source_networks:
                wanted.add((protocol, *ports, "group:" + self.group_name(source)))
        return frozenset(wanted)

    async def ensure_group(self, network: str) -> str:
        """The network's remote group, created if needed, holding the network's rules now."""
        name = self.group_name(network)
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            wanted = self.permissions(self.rules.get(network, []))
            if self._applied.get(name) == wanted:
                return name
            current = await self._current(name)
            if current is None:
                await self._create(name, network)
                current = frozenset()
            for source in {p[3][6:] for p in wanted if p[3].startswith("group:")} - {name}:
                if await self._current(source) is None:  # a rule naming another group: it must exist remotely
                    await self._create(source, source)
            extra, missing = current - wanted, wanted - current
            if extra:
                await self.ec2.call("RevokeSecurityGroupIngress", {"GroupName": name, "IpPermissions": _ip(extra)})
            if missing:
                await self.ec2.call("AuthorizeSecurityGroupIngress", {"GroupName": name, "IpPermissions": _ip(missing)})
            self._applied[name] = wanted
            if extra or missing:
                log.info("remote group %s: %d rules added, %d removed", name, len(missing), len(extra))
            return name

    async def _create(self, name: str, network: str) -> None:
        try:
            await self.ec2.call(
                "CreateSecurityGroup", {"GroupName": name, "Description": f"Koala network {network}"[:255]}
            )
            log.info("remote group %s created", name)
        except RemoteRefused as err:
            if err.code != "InvalidGroup.Duplicate":
                raise

    async def _current(self, name: str) -> frozenset[Permission] | None:
        try:
            answer = await self.ec2.call("DescribeSecurityGroups", {"GroupNames": [name]})
        except RemoteRefused as err:
            if err.code in ("InvalidGroup.NotFound", "InvalidGroupId.NotFound"):
                return None
            raise
        groups = answer.get("SecurityGroups") or []
        if not groups:
            return None
        found: set[Permission] = set()
        for permission in groups[0].get("IpPermissions") or []:
            protocol = str(permission.get("IpProtocol", "-1"))
            ports = (int(permission.get("FromPort", -1)), int(permission.get("ToPort", -1)))
            if protocol == "-1":
                ports = (-1, -1)
            for item in permission.get("IpRanges") or []:
                found.add((protocol, *ports, item["CidrIp"]))
            for pair in permission.get("UserIdGroupPairs") or []:
                if pair.get("GroupName"):
                    found.add((protocol, *ports, "group:" + pair["GroupName"]))
        return frozenset(found)

    # --- clean-up ---------------------------------------------------------------------------------------
    async def sweep(self, keys_in_use: set[str], groups_in_use: set[str]) -> bool:
        """Delete this cloud's remote key pairs and groups that no live instance uses; False if some group could
        not go yet."""
        done = True
        answer = await self.ec2.call("DescribeKeyPairs", {})
        for pair in answer.get("KeyPairs") or []:
            name = pair.get("KeyName", "")
            if self.ours(name) and name not in keys_in_use:
                await self.ec2.call("DeleteKeyPair", {"KeyName": name})
                self._keys.discard(name)
                log.info("remote key pair %s deleted", name)
        answer = await self.ec2.call("DescribeSecurityGroups", {})
        for group in answer.get("SecurityGroups") or []:
            name = group.get("GroupName", "")
            if self.ours(name) and name not in groups_in_use:
                try:
                    await self.ec2.call("DeleteSecurityGroup", {"GroupName": name})
                except RemoteRefused as err:  # still used remotely (an instance on its way out): next sweep
                    log.info("remote group %s not deleted yet: %s", name, err.code)
                    done = False
                    continue
                self._applied.pop(name, None)
                log.info("remote group %s deleted", name)
        return done


def _ip(permissions: frozenset[Permission]) -> list[dict[str, Any]]:
    out = []
    for protocol, low, high, source in sorted(permissions):
        item: dict[str, Any] = {"IpProtocol": protocol}
        if protocol != "-1":
            item["FromPort"], item["ToPort"] = low, high
        if source.startswith("group:"):
            item["UserIdGroupPairs"] = [{"GroupName": source[6:]}]
        else:
            item["IpRanges"] = [{"CidrIp": source}]
        out.append(item)
    return out
