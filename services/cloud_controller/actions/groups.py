"""Security groups (EC2-Classic, ingress only): Create, Delete, Describe, Authorize/RevokeSecurityGroupIngress.

Every account has a `default` group (made on first use). A rule is (protocol, from port, to port, source),
the source a CIDR or another group (any account's, by id or by owner id + name). Rules come as `IpPermissions`
or as the old flat parameters (IpProtocol, FromPort, ToPort, CidrIp, SourceSecurityGroupName,
SourceSecurityGroupOwnerId); a source group without a protocol grants tcp, udp and icmp entirely, as EC2-Classic
did.

For other parts of the CLC:
- `await groups.rules(db, group_id)` -> the group's full rule set ([Rule]), what the network must enforce
  (`rules_by_name(db, owner_id, name)` by name),
- `groups.add_listener(fn)`: `await fn(owner_id, group_id)` after every change of a group's rules or its
  deletion (errors are logged, never raised to the user),
- `await groups.resolve(db, owner_id, names, ids)` -> [{"group_id", "name", "owner_id"}] for RunInstances
  (the default group when both are empty; InvalidGroup.NotFound for unknown ones; call it outside a
  `db.transaction()`, as it may create the default group),
- `groups.IN_USE_CHECKS.append(fn)`: `await fn(db, owner_id, group_id, name)` -> True refuses DeleteSecurityGroup
  with InvalidGroup.InUse (e.g. while instances run in the group).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from common.ids import new_id
from services.cloud_controller.actions import Context, action, tags
from services.cloud_controller.compute.errors import check_id
from services.cloud_controller.ec2.errors import Ec2Error, invalid, missing
from services.cloud_controller.ec2.filters import Filters

log = logging.getLogger("koala.clc.groups")

DEFAULT = "default"
_TEXT = re.compile(r"^[\x20-\x7e]{1,255}$")
PROTOCOLS = {"tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp", "icmp": "icmp", "1": "icmp", "-1": "-1", "all": "-1"}
MAX_RULES_PER_GROUP = 100
MAX_RULES_PER_REQUEST = 100


@dataclass(frozen=True)
class Rule:
    protocol: str  # tcp, udp, icmp, -1 (all) or a protocol number
    from_port: int  # -1 when not applicable; icmp: the type
    to_port: int  # icmp: the code
    cidr: str = ""
    source_group_id: str = ""
    source_owner_id: str = ""
    source_group_name: str = ""

    @property
    def key(self) -> tuple[str, int, int, str, str]:
        return (self.protocol, self.from_port, self.to_port, self.cidr, self.source_group_id)


Listener = Callable[[str, str], Awaitable[None]]
LISTENERS: list[Listener] = []
InUseCheck = Callable[[Any, str, str, str], Awaitable[bool]]
IN_USE_CHECKS: list[InUseCheck] = []


def add_listener(listener: Listener) -> None:
    LISTENERS.append(listener)


async def _notify(owner_id: str, group_id: str) -> None:
    for listener in LISTENERS:
        try:
            await listener(owner_id, group_id)
        except Exception:
            log.exception("security group listener failed for %s", group_id)


# --- lookups -----------------------------------------------------------------------------------------------
async def ensure_default(db: Any, owner_id: str) -> None:
    if await db.fetchone("SELECT 1 FROM security_groups WHERE owner_id = ? AND name = ?", (owner_id, DEFAULT)):
        return
    async with db.transaction() as conn:
        await conn.execute(
            "INSERT OR IGNORE INTO security_groups(group_id, owner_id, name, description, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (new_id("sg"), owner_id, DEFAULT, "default group", time.time()),
        )


async def rules(db: Any, group_id: str) -> list[Rule]:
    """The full ingress rule set of a group, sources resolved to owner and name."""
    rows = await db.fetchall(
        "SELECT r.protocol, r.from_port, r.to_port, r.cidr, r.source_group_id, s.owner_id AS source_owner_id,"
        " s.name AS source_group_name FROM security_group_rules r LEFT JOIN security_groups s"
        " ON s.group_id = r.source_group_id WHERE r.group_id = ? ORDER BY r.rule_id",
        (group_id,),
    )
    return [_rule(row) for row in rows]


async def rules_by_name(db: Any, owner_id: str, name: str) -> list[Rule] | None:
    """The rule set of the account's group `name`; None if there is no such group."""
    group = await find(db, owner_id, name=name)
    return None if group is None else await rules(db, group["group_id"])


def _rule(row: Any) -> Rule:
    return Rule(
        row["protocol"],
        row["from_port"],
        row["to_port"],
        row["cidr"],
        row["source_group_id"],
        row["source_owner_id"] or "",
        row["source_group_name"] or "",
    )


async def find(db: Any, owner_id: str, name: str | None = None, group_id: str | None = None) -> dict | None:
    if group_id:
        row = await db.fetchone(
            "SELECT * FROM security_groups WHERE owner_id = ? AND group_id = ?", (owner_id, group_id.lower())
        )
    else:
        row = await db.fetchone("SELECT * FROM security_groups WHERE owner_id = ? AND name = ?", (owner_id, name))
    return dict(row) if row else None


async def resolve(db: Any, owner_id: str, names: list[str] | None = None, ids: list[str] | None = None) -> list[dict]:
    names, ids = list(names or []), list(ids or [])
    await ensure_default(db, owner_id)
    if not names and not ids:
        names = [DEFAULT]
    found: dict[str, dict] = {}
    for name in names:
        group = await find(db, owner_id, name=name)
        if group is None:
            raise _not_found(name)
        found[group["group_id"]] = group
    for group_id in ids:
        # ec2-api-tools send every `-g` value as SecurityGroupId.N: a value that is not an sg- id is a name, as
        # EC2-Classic-era servers took it (EC2 forbids names starting with sg-, so those are malformed ids).
        if group_id.lower().startswith("sg-"):
            group = await find(db, owner_id, group_id=check_id(group_id, "sg"))
        else:
            group = await find(db, owner_id, name=group_id)
        if group is None:
            raise _not_found(group_id)
        found[group["group_id"]] = group
    return [{"group_id": g["group_id"], "name": g["name"], "owner_id": g["owner_id"]} for g in found.values()]


async def owned(db: Any, owner_id: str, ids: list[str]) -> set[str]:
    rows = await db.fetchall(
        f"SELECT group_id FROM security_groups WHERE owner_id = ? AND group_id IN ({','.join('?' * len(ids))})",
        (owner_id, *ids),
    )
    return {row["group_id"] for row in rows}


tags.register("sg", "security-group", owned, "InvalidGroup.NotFound")


def _not_found(what: str) -> Ec2Error:
    return Ec2Error("InvalidGroup.NotFound", f"The security group '{what[:255]}' does not exist")


async def _target(ctx: Context, params: dict[str, Any]) -> dict:
    name, group_id = params.get("GroupName"), params.get("GroupId")
    if not name and not group_id:
        raise missing("GroupName")
    if group_id:
        group_id = check_id(group_id, "sg")
    await ensure_default(ctx.db, ctx.owner_id)
    group = await find(ctx.db, ctx.owner_id, name=name, group_id=group_id)
    if group is None:
        raise _not_found(group_id or name or "")
    return group


# --- rules from parameters -----------------------------------------------------------------------------------
def _protocol(value: Any) -> str:
    text = str(value).strip().lower()
    if text in PROTOCOLS:
        return PROTOCOLS[text]
    if text.isdigit() and 0 <= int(text) <= 255:
        return text
    raise invalid("IpProtocol", value, "tcp, udp, icmp, -1 or a protocol number.")


def _ports(protocol: str, from_port: Any, to_port: Any) -> tuple[int, int]:
    if protocol in ("tcp", "udp"):
        if from_port is None or to_port is None:
            raise Ec2Error(
                "InvalidParameterValue", f"Invalid value: both FromPort and ToPort are required for {protocol}"
            )
        if not (0 <= from_port <= 65535 and 0 <= to_port <= 65535) or from_port > to_port:
            raise Ec2Error("InvalidParameterValue", f"Invalid port range {from_port}-{to_port}")
        return from_port, to_port
    if protocol == "icmp":
        icmp_type = -1 if from_port is None else from_port
        code = -1 if to_port is None else to_port
        if not (-1 <= icmp_type <= 255 and -1 <= code <= 255):
            raise Ec2Error("InvalidParameterValue", f"Invalid ICMP type {icmp_type} or code {code}")
        return icmp_type, code
    return -1, -1


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.IPv4Network(value.strip(), strict=False))
    except ValueError:
        raise invalid("CidrIp", value, "An IPv4 CIDR block is expected.") from None


async def _source_group(ctx: Context, pair: dict[str, Any]) -> dict:
    group_id, name, owner = pair.get("GroupId"), pair.get("GroupName"), pair.get("UserId") or ctx.owner_id
    if group_id:
        row = await ctx.db.fetchone("SELECT * FROM security_groups WHERE group_id = ?", (check_id(group_id, "sg"),))
    elif name:
        if owner == ctx.owner_id:
            await ensure_default(ctx.db, ctx.owner_id)
        row = await ctx.db.fetchone(
            "SELECT g.* FROM security_groups g LEFT JOIN accounts a ON a.account_id = g.owner_id"
            " WHERE g.name = ? AND (g.owner_id = ? OR a.name = ?)",
            (name, owner, owner),
        )
    else:
        raise missing("GroupName")
    if row is None:
        raise _not_found(group_id or name or "")
    return dict(row)


async def rules_from(ctx: Context, params: dict[str, Any]) -> list[Rule]:
    """The rules a request names, from IpPermissions or the old flat parameters; validated, de-duplicated."""
    permissions = list(params.get("IpPermissions") or [])
    flat = {key: params.get(key) for key in ("IpProtocol", "FromPort", "ToPort", "CidrIp", "SourceSecurityGroupName")}
    if any(value is not None for value in flat.values()):
        if flat["SourceSecurityGroupName"]:
            pair = {"GroupName": flat["SourceSecurityGroupName"], "UserId": params.get("SourceSecurityGroupOwnerId")}
            if flat["IpProtocol"] is None:
                # EC2-Classic: a source group alone grants every tcp and udp port and all of icmp.
                for protocol, low, high in (("tcp", 0, 65535), ("udp", 0, 65535), ("icmp", -1, -1)):
                    permissions.append(
                        {"IpProtocol": protocol, "FromPort": low, "ToPort": high, "UserIdGroupPairs": [pair]}
                    )
            else:
                permissions.append(
                    {
                        "IpProtocol": flat["IpProtocol"],
                        "FromPort": flat["FromPort"],
                        "ToPort": flat["ToPort"],
                        "UserIdGroupPairs": [pair],
                    }
                )
        if flat["CidrIp"] is not None or not flat["SourceSecurityGroupName"]:
            if flat["IpProtocol"] is None:
                raise missing("IpProtocol")
            permissions.append(
                {
                    "IpProtocol": flat["IpProtocol"],
                    "FromPort": flat["FromPort"],
                    "ToPort": flat["ToPort"],
                    "IpRanges": [{"CidrIp": flat["CidrIp"] or "0.0.0.0/0"}],
                }
            )
    if not permissions:
        raise missing("IpPermissions")
    found: dict[tuple, Rule] = {}
    for permission in permissions:
        if permission.get("IpProtocol") is None:
            raise missing("IpPermissions.N.IpProtocol")
        protocol = _protocol(permission["IpProtocol"])
        low, high = _ports(protocol, permission.get("FromPort"), permission.get("ToPort"))
        if permission.get("Ipv6Ranges") or permission.get("PrefixListIds"):
            raise Ec2Error("InvalidParameterValue", "IPv6 ranges and prefix lists are not supported (EC2-Classic)")
        ranges, pairs = permission.get("IpRanges") or [], permission.get("UserIdGroupPairs") or []
        if not ranges and not pairs:
            raise Ec2Error("MissingParameter", "A permission needs IpRanges or UserIdGroupPairs (a source)")
        for item in ranges:
            if not item.get("CidrIp"):
                raise missing("IpPermissions.N.IpRanges.N.CidrIp")
            rule = Rule(protocol, low, high, cidr=_cidr(item["CidrIp"]))
            found[rule.key] = rule
        for pair in pairs:
            source = await _source_group(ctx, pair)
            rule = Rule(
                protocol,
                low,
                high,
                source_group_id=source["group_id"],
                source_owner_id=source["owner_id"],
                source_group_name=source["name"],
            )
            found[rule.key] = rule
        if len(found) > MAX_RULES_PER_REQUEST:
            raise Ec2Error("RulesPerSecurityGroupLimitExceeded", f"At most {MAX_RULES_PER_REQUEST} rules per request")
    return list(found.values())


def _describe_rule(rule: Rule) -> str:
    source = rule.cidr or f"{rule.source_owner_id}/{rule.source_group_name}"
    return f"{rule.protocol} {rule.from_port}-{rule.to_port} from {source}"


# --- actions -------------------------------------------------------------------------------------------------
@action("CreateSecurityGroup")
async def create_security_group(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    name, description = params["GroupName"], params["Description"]
    if not _TEXT.match(name):
        raise invalid("GroupName", name, "Group names are 1 to 255 ASCII characters.")
    if not _TEXT.match(description):
        raise invalid("GroupDescription", description, "Descriptions are 1 to 255 ASCII characters.")
    if params.get("VpcId"):
        raise Ec2Error("InvalidParameterValue", "VPCs are not supported (EC2-Classic)")
    tag_list = tags.tag_specifications(params, "security-group")
    await ensure_default(ctx.db, ctx.owner_id)
    group_id = new_id("sg")
    async with ctx.db.transaction() as conn:
        async with conn.execute(
            "SELECT 1 FROM security_groups WHERE owner_id = ? AND name = ?", (ctx.owner_id, name)
        ) as cursor:
            if await cursor.fetchone():
                raise Ec2Error("InvalidGroup.Duplicate", f"The security group '{name}' already exists")
        await conn.execute(
            "INSERT INTO security_groups(group_id, owner_id, name, description, created_at) VALUES (?, ?, ?, ?, ?)",
            (group_id, ctx.owner_id, name, description, time.time()),
        )
        if tag_list:
            await tags.put_in(conn, ctx.owner_id, [(group_id, "security-group")], tags.check_tags(tag_list))
    log.info("account %s created security group %s (%s)", ctx.owner_id, name, group_id)
    return {"GroupId": group_id, "Tags": (await tags.tags_for(ctx.db, [group_id])).get(group_id)}


@action("DeleteSecurityGroup")
async def delete_security_group(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    group = await _target(ctx, params)
    if group["name"] == DEFAULT:
        raise Ec2Error("CannotDelete", "the default security group cannot be deleted")
    for check in IN_USE_CHECKS:
        if await check(ctx.db, ctx.owner_id, group["group_id"], group["name"]):
            raise Ec2Error("InvalidGroup.InUse", f"There are active instances using security group '{group['name']}'")
    async with ctx.db.transaction() as conn:
        async with conn.execute(
            "SELECT DISTINCT group_id FROM security_group_rules WHERE source_group_id = ? AND group_id != ?",
            (group["group_id"], group["group_id"]),
        ) as cursor:
            users = [row[0] for row in await cursor.fetchall()]
        if users:
            raise Ec2Error("InvalidGroup.InUse", f"Group {group['group_id']} is used by groups: {' '.join(users[:10])}")
        await conn.execute("DELETE FROM security_groups WHERE group_id = ?", (group["group_id"],))
        await conn.execute("DELETE FROM tags WHERE resource_id = ?", (group["group_id"],))
    log.info("account %s deleted security group %s (%s)", ctx.owner_id, group["name"], group["group_id"])
    await _notify(ctx.owner_id, group["group_id"])
    return {"Return": True, "GroupId": group["group_id"]}


@action("AuthorizeSecurityGroupIngress")
async def authorize_security_group_ingress(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    group = await _target(ctx, params)
    wanted = await rules_from(ctx, params)
    async with ctx.db.transaction() as conn:
        async with conn.execute(
            "SELECT protocol, from_port, to_port, cidr, source_group_id FROM security_group_rules WHERE group_id = ?",
            (group["group_id"],),
        ) as cursor:
            existing = {tuple(row) for row in await cursor.fetchall()}
        for rule in wanted:
            if rule.key in existing:
                raise Ec2Error(
                    "InvalidPermission.Duplicate",
                    f'the specified rule "peer: {_describe_rule(rule)}" already exists',
                )
        if len(existing) + len(wanted) > MAX_RULES_PER_GROUP:
            raise Ec2Error("RulesPerSecurityGroupLimitExceeded", f"A group has at most {MAX_RULES_PER_GROUP} rules")
        await conn.executemany(
            "INSERT INTO security_group_rules(group_id, protocol, from_port, to_port, cidr, source_group_id)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(group["group_id"], *rule.key) for rule in wanted],
        )
    log.info("security group %s: authorized %d rule(s)", group["group_id"], len(wanted))
    await _notify(ctx.owner_id, group["group_id"])
    return {"Return": True}


@action("RevokeSecurityGroupIngress")
async def revoke_security_group_ingress(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    group = await _target(ctx, params)
    if params.get("SecurityGroupRuleIds"):
        raise Ec2Error("InvalidParameterValue", "SecurityGroupRuleIds are not supported; name the permissions")
    wanted = await rules_from(ctx, params)
    async with ctx.db.transaction() as conn:
        for rule in wanted:
            cursor = await conn.execute(
                "DELETE FROM security_group_rules WHERE group_id = ? AND protocol = ? AND from_port = ? AND to_port = ?"
                " AND cidr = ? AND source_group_id = ?",
                (group["group_id"], *rule.key),
            )
            if cursor.rowcount == 0:
                raise Ec2Error(
                    "InvalidPermission.NotFound",
                    f"The specified rule does not exist in this security group: {_describe_rule(rule)}",
                )
    log.info("security group %s: revoked %d rule(s)", group["group_id"], len(wanted))
    await _notify(ctx.owner_id, group["group_id"])
    return {"Return": True}


@action("AuthorizeSecurityGroupEgress")
@action("RevokeSecurityGroupEgress")
async def security_group_egress(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """EC2-Classic groups have no egress rules: EC2 named the group's failures first, then refused the call."""
    await _target(ctx, {"GroupId": params["GroupId"]})
    raise Ec2Error("InvalidParameterValue", "Only Amazon VPC security groups may be used with this operation.")


DESCRIBE_FILTERS = {
    "description",
    "group-id",
    "group-name",
    "owner-id",
    "ip-permission.protocol",
    "ip-permission.from-port",
    "ip-permission.to-port",
    "ip-permission.cidr",
    "ip-permission.group-name",
    "ip-permission.group-id",
    "ip-permission.user-id",
}


def permissions(rule_list: list[Rule]) -> list[dict[str, Any]]:
    """Rules grouped as EC2 answers them: one permission per (protocol, ports) with its ranges and groups."""
    grouped: dict[tuple[str, int, int], dict[str, Any]] = {}
    for rule in rule_list:
        key = (rule.protocol, rule.from_port, rule.to_port)
        permission = grouped.get(key)
        if permission is None:
            permission = grouped[key] = {
                "IpProtocol": rule.protocol,
                "IpRanges": [],
                "UserIdGroupPairs": [],
                "Ipv6Ranges": [],
                "PrefixListIds": [],
            }
            if rule.protocol != "-1":
                permission["FromPort"], permission["ToPort"] = rule.from_port, rule.to_port
        if rule.cidr:
            permission["IpRanges"].append({"CidrIp": rule.cidr})
        else:
            permission["UserIdGroupPairs"].append(
                {"UserId": rule.source_owner_id, "GroupName": rule.source_group_name, "GroupId": rule.source_group_id}
            )
    return list(grouped.values())


@action("DescribeSecurityGroups")
async def describe_security_groups(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    names, ids = params.get("GroupNames") or [], [check_id(i, "sg") for i in params.get("GroupIds") or []]
    filters = Filters.parse(params.get("Filters"), DESCRIBE_FILTERS)
    limit = params.get("MaxResults")
    if limit is not None and not 5 <= limit <= 1000:
        raise invalid("MaxResults", limit, "MaxResults must be between 5 and 1000.")
    after = params.get("NextToken") or ""
    await ensure_default(ctx.db, ctx.owner_id)
    groups = await ctx.db.fetchall(
        "SELECT group_id, owner_id, name, description FROM security_groups WHERE owner_id = ? ORDER BY group_id",
        (ctx.owner_id,),
    )
    known_names = {g["name"] for g in groups}
    known_ids = {g["group_id"] for g in groups}
    for name in names:
        if name not in known_names:
            raise _not_found(name)
    for group_id in ids:
        if group_id not in known_ids:
            raise Ec2Error("InvalidGroup.NotFound", f"The security group '{group_id[:64]}' does not exist")
    if names or ids:
        groups = [g for g in groups if g["name"] in names or g["group_id"] in ids]
    rule_rows = await ctx.db.fetchall(
        "SELECT r.group_id, r.protocol, r.from_port, r.to_port, r.cidr, r.source_group_id,"
        " s.owner_id AS source_owner_id, s.name AS source_group_name FROM security_group_rules r"
        " JOIN security_groups g ON g.group_id = r.group_id"
        " LEFT JOIN security_groups s ON s.group_id = r.source_group_id WHERE g.owner_id = ? ORDER BY r.rule_id",
        (ctx.owner_id,),
    )
    by_group: dict[str, list[Rule]] = {}
    for row in rule_rows:
        by_group.setdefault(row["group_id"], []).append(_rule(row))
    allowed = await tags.ids_matching(ctx.db, ctx.owner_id, filters.tags)
    selected = []
    for group in groups:
        if allowed is not None and group["group_id"] not in allowed:
            continue
        group_rules = by_group.get(group["group_id"], [])
        if not _group_matches(filters, group, group_rules):
            continue
        selected.append((group, group_rules))
    next_token = None
    if after:
        selected = [item for item in selected if item[0]["group_id"] > after]
    if limit is not None and len(selected) > limit:
        selected = selected[:limit]
        next_token = selected[-1][0]["group_id"]
    tag_sets = await tags.tags_for(ctx.db, [g["group_id"] for g, _ in selected]) if selected else {}
    return {
        "SecurityGroups": [
            {
                "OwnerId": group["owner_id"],
                "GroupName": group["name"],
                "GroupId": group["group_id"],
                "Description": group["description"],
                "IpPermissions": permissions(group_rules),
                "IpPermissionsEgress": [],
                "Tags": tag_sets.get(group["group_id"]),
            }
            for group, group_rules in selected
        ],
        "NextToken": next_token,
    }


def _group_matches(filters: Filters, group: Any, group_rules: list[Rule]) -> bool:
    if not filters.match_all(
        {
            "description": group["description"],
            "group-id": group["group_id"],
            "group-name": group["name"],
            "owner-id": group["owner_id"],
        }
    ):
        return False
    if not any(name.startswith("ip-permission.") for name in filters.by_name):
        return True
    return any(
        filters.match_all(
            {
                "ip-permission.protocol": rule.protocol,
                "ip-permission.from-port": str(rule.from_port),
                "ip-permission.to-port": str(rule.to_port),
                "ip-permission.cidr": rule.cidr or None,
                "ip-permission.group-name": rule.source_group_name or None,
                "ip-permission.group-id": rule.source_group_id or None,
                "ip-permission.user-id": rule.source_owner_id or None,
            }
        )
        for rule in group_rules
    )
