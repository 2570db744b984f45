"""Security groups (EC2-Classic, ingress only): Create, Delete, Describe, Authorize/RevokeSecurityGroupIngress.

Every account has a `default` group (made on first use). A rule is (protocol, from port, to port, source),
the source a CIDR or another group (any account's, by id or by owner id + name). Rules come as `IpPermissions`
or as the old flat parameters (IpProtocol, FromPort, ToPort, CidrIp, SourceSecurityGroupName,
SourceSecurityGroupOwnerId); a source group without a protocol grants tcp, udp and icmp entirely, as EC2-Classic
did.

The groups and their rules are kept by the compute layer's store (`compute/security_groups.py`,
`ctx.compute.security_groups`); this module parses requests into its `Rule`s and shapes the answers.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from services.cloud_controller.actions import Context, action, tags
from services.cloud_controller.compute.errors import check_id
from services.cloud_controller.compute.security_groups import Rule, not_found
from services.cloud_controller.ec2.errors import Ec2Error, invalid, missing
from services.cloud_controller.ec2.filters import Filters

_TEXT = re.compile(r"^[\x20-\x7e]{1,255}$")
PROTOCOLS = {"tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp", "icmp": "icmp", "1": "icmp", "-1": "-1", "all": "-1"}
MAX_RULES_PER_REQUEST = 100


async def _target(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    name, group_id = params.get("GroupName"), params.get("GroupId")
    if not name and not group_id:
        raise missing("GroupName")
    if group_id:
        group_id = check_id(group_id, "sg")
    store = ctx.compute.security_groups
    await store.ensure_default(ctx.owner_id)
    group = await store.find(ctx.owner_id, name=name, group_id=group_id)
    if group is None:
        raise not_found(group_id or name or "")
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


async def _source_group(ctx: Context, pair: dict[str, Any]) -> dict[str, Any]:
    group_id, name, owner = pair.get("GroupId"), pair.get("GroupName"), pair.get("UserId") or ctx.owner_id
    store = ctx.compute.security_groups
    if group_id:
        group_id = check_id(group_id, "sg")
    elif name:
        if owner == ctx.owner_id:
            await store.ensure_default(ctx.owner_id)
    else:
        raise missing("GroupName")
    found = await store.source(group_id, name, owner)
    if found is None:
        raise not_found(group_id or name or "")
    return found


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
    found: dict[tuple[Any, ...], Rule] = {}
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
    group_id = await ctx.compute.security_groups.create(ctx.owner_id, name, description, tags.check_tags(tag_list))
    return {"GroupId": group_id, "Tags": (await ctx.compute.tags.tags_for([group_id])).get(group_id)}


@action("DeleteSecurityGroup")
async def delete_security_group(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    group = await _target(ctx, params)
    await ctx.compute.security_groups.delete(ctx.owner_id, group)
    return {"Return": True, "GroupId": group["group_id"]}


@action("AuthorizeSecurityGroupIngress")
async def authorize_security_group_ingress(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    group = await _target(ctx, params)
    wanted = await rules_from(ctx, params)
    await ctx.compute.security_groups.authorize(ctx.owner_id, group["group_id"], wanted)
    return {"Return": True}


@action("RevokeSecurityGroupIngress")
async def revoke_security_group_ingress(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    group = await _target(ctx, params)
    if params.get("SecurityGroupRuleIds"):
        raise Ec2Error("InvalidParameterValue", "SecurityGroupRuleIds are not supported; name the permissions")
    wanted = await rules_from(ctx, params)
    await ctx.compute.security_groups.revoke(ctx.owner_id, group["group_id"], wanted)
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
    store = ctx.compute.security_groups
    await store.ensure_default(ctx.owner_id)
    groups = await store.of_account(ctx.owner_id)
    known_names = {g["name"] for g in groups}
    known_ids = {g["group_id"] for g in groups}
    for name in names:
        if name not in known_names:
            raise not_found(name)
    for group_id in ids:
        if group_id not in known_ids:
            raise Ec2Error("InvalidGroup.NotFound", f"The security group '{group_id[:64]}' does not exist")
    if names or ids:
        groups = [g for g in groups if g["name"] in names or g["group_id"] in ids]
    by_group = await store.rules_of_account(ctx.owner_id)
    allowed = await ctx.compute.tags.ids_matching(ctx.owner_id, filters.tags)
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
    tag_sets = await ctx.compute.tags.tags_for([g["group_id"] for g, _ in selected]) if selected else {}
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
