"""Security groups (EC2-Classic, ingress only): the `security_groups` and `security_group_rules` tables.

Every account has a `default` group (made on first use). A rule is (protocol, from port, to port, source), the
source a CIDR or another group (any account's). The actions (`actions/groups.py`) parse requests into `Rule`s;
this store keeps them and serves the other parts of the CLC:
- `rules(group_id)` / `rules_by_name(owner_id, name)`: a group's full rule set, what the network must enforce;
- `listeners`: `await fn(owner_id, group_id)` after every change of a group's rules or its deletion (errors are
  logged, never raised to the user);
- `resolve(owner_id, names, ids)` for a launch (the default group when both are empty; InvalidGroup.NotFound for
  unknown ones; call it outside a `db.transaction()`, as it may create the default group).
A group cannot be deleted while live instances of its account are in it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from common.database import Row
from common.ids import new_id
from services.cloud_controller.compute.errors import ComputeError, check_id
from services.cloud_controller.compute.store import LIVE_STATES
from services.cloud_controller.compute.tags import Tags
from services.cloud_controller.database import Database

log = logging.getLogger("koala.clc.groups")

DEFAULT = "default"
MAX_RULES_PER_GROUP = 100


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

    def describe(self) -> str:
        source = self.cidr or f"{self.source_owner_id}/{self.source_group_name}"
        return f"{self.protocol} {self.from_port}-{self.to_port} from {source}"


Listener = Callable[[str, str], Awaitable[None]]  # (owner id, group id)


def not_found(what: str) -> ComputeError:
    return ComputeError("InvalidGroup.NotFound", f"The security group '{what[:255]}' does not exist")


def rule_from_row(row: Any) -> Rule:
    return Rule(
        row["protocol"],
        row["from_port"],
        row["to_port"],
        row["cidr"],
        row["source_group_id"],
        row["source_owner_id"] or "",
        row["source_group_name"] or "",
    )


class SecurityGroups:
    def __init__(self, db: Database, tags: Tags):
        self.db, self.tags = db, tags
        self.listeners: list[Listener] = []
        # Each account's default group, as found once: it is never deleted nor changed, so every launch naming no
        # group (the common case) is resolved without a query
        self._defaults: dict[str, dict[str, Any]] = {}
        tags.register("sg", "security-group", self.owned, "InvalidGroup.NotFound")

    async def _notify(self, owner_id: str, group_id: str) -> None:
        for listener in self.listeners:
            try:
                await listener(owner_id, group_id)
            except Exception:
                log.exception("security group listener failed for %s", group_id)

    # --- lookups -------------------------------------------------------------------------------------------
    async def ensure_default(self, owner_id: str) -> None:
        if owner_id in self._defaults:
            return
        query = "SELECT * FROM security_groups WHERE owner_id = ? AND name = ?"
        row = await self.db.fetchone(query, (owner_id, DEFAULT))
        if row is None:
            async with self.db.transaction() as conn:
                await conn.execute(
                    "INSERT INTO security_groups(group_id, owner_id, name, description, created_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (new_id("sg"), owner_id, DEFAULT, "default group", time.time()),
                )
            row = await self.db.fetchone(query, (owner_id, DEFAULT))  # ours, or another process's made meanwhile
        if row is not None:
            self._defaults[owner_id] = dict(row)

    async def rules(self, group_id: str) -> list[Rule]:
        """The full ingress rule set of a group, sources resolved to owner and name."""
        rows = await self.db.fetchall(
            "SELECT r.protocol, r.from_port, r.to_port, r.cidr, r.source_group_id, s.owner_id AS source_owner_id,"
            " s.name AS source_group_name FROM security_group_rules r LEFT JOIN security_groups s"
            " ON s.group_id = r.source_group_id WHERE r.group_id = ? ORDER BY r.rule_id",
            (group_id,),
        )
        return [rule_from_row(row) for row in rows]

    async def rules_by_name(self, owner_id: str, name: str) -> list[Rule] | None:
        """The rule set of the account's group `name`; None if there is no such group."""
        group = await self.find(owner_id, name=name)
        return None if group is None else await self.rules(group["group_id"])

    async def find(self, owner_id: str, name: str | None = None, group_id: str | None = None) -> dict[str, Any] | None:
        if not group_id and name == DEFAULT and owner_id in self._defaults:
            return dict(self._defaults[owner_id])
        if group_id:
            row = await self.db.fetchone(
                "SELECT * FROM security_groups WHERE owner_id = ? AND group_id = ?", (owner_id, group_id.lower())
            )
        else:
            row = await self.db.fetchone(
                "SELECT * FROM security_groups WHERE owner_id = ? AND name = ?", (owner_id, name)
            )
        return dict(row) if row else None

    async def name_of(self, owner_id: str, group_id: str) -> str | None:
        group = await self.find(owner_id, group_id=group_id)
        return group["name"] if group else None

    async def source(self, group_id: str | None, name: str | None, owner: str) -> dict[str, Any] | None:
        """A rule's source group, any account's: by id, or by name and its owner's account id or name."""
        if group_id:
            row = await self.db.fetchone("SELECT * FROM security_groups WHERE group_id = ?", (group_id,))
        else:
            row = await self.db.fetchone(
                "SELECT g.* FROM security_groups g LEFT JOIN accounts a ON a.account_id = g.owner_id"
                " WHERE g.name = ? AND (g.owner_id = ? OR a.name = ?)",
                (name, owner, owner),
            )
        return dict(row) if row else None

    async def resolve(
        self, owner_id: str, names: list[str] | None = None, ids: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """A launch's groups, [{"group_id", "name", "owner_id"}]: the default group when none are named."""
        names, ids = list(names or []), list(ids or [])
        await self.ensure_default(owner_id)
        if not names and not ids:
            names = [DEFAULT]
        found: dict[str, dict[str, Any]] = {}
        for name in names:
            group = await self.find(owner_id, name=name)
            if group is None:
                raise not_found(name)
            found[group["group_id"]] = group
        for group_id in ids:
            # ec2-api-tools send every `-g` value as SecurityGroupId.N: a value that is not an sg- id is a name, as
            # EC2-Classic-era servers took it (EC2 forbids names starting with sg-, so those are malformed ids).
            if group_id.lower().startswith("sg-"):
                group = await self.find(owner_id, group_id=check_id(group_id, "sg"))
            else:
                group = await self.find(owner_id, name=group_id)
            if group is None:
                raise not_found(group_id)
            found[group["group_id"]] = group
        return [{"group_id": g["group_id"], "name": g["name"], "owner_id": g["owner_id"]} for g in found.values()]

    async def owned(self, owner_id: str, ids: list[str]) -> set[str]:
        rows = await self.db.fetchall(
            f"SELECT group_id FROM security_groups WHERE owner_id = ? AND group_id IN ({','.join('?' * len(ids))})",
            (owner_id, *ids),
        )
        return {row["group_id"] for row in rows}

    async def of_account(self, owner_id: str) -> list[Row]:
        """The account's groups by id (group_id, owner_id, name, description)."""
        return await self.db.fetchall(
            "SELECT group_id, owner_id, name, description FROM security_groups WHERE owner_id = ? ORDER BY group_id",
            (owner_id,),
        )

    async def every_account(self, limit: int) -> list[Row]:
        """Every account's groups by owner and name, at most `limit` (the admin pages)."""
        return await self.db.fetchall(
            "SELECT group_id, owner_id, name, description FROM security_groups ORDER BY owner_id, name LIMIT ?",
            (limit,),
        )

    async def rules_of_account(self, owner_id: str) -> dict[str, list[Rule]]:
        """Every group's rules of the account, by group id."""
        rows = await self.db.fetchall(
            "SELECT r.group_id, r.protocol, r.from_port, r.to_port, r.cidr, r.source_group_id,"
            " s.owner_id AS source_owner_id, s.name AS source_group_name FROM security_group_rules r"
            " JOIN security_groups g ON g.group_id = r.group_id"
            " LEFT JOIN security_groups s ON s.group_id = r.source_group_id WHERE g.owner_id = ? ORDER BY r.rule_id",
            (owner_id,),
        )
        by_group: dict[str, list[Rule]] = {}
        for row in rows:
            by_group.setdefault(row["group_id"], []).append(rule_from_row(row))
        return by_group

    async def in_use(self, owner_id: str, name: str) -> bool:
        """Live instances of the account are in the group `name`."""
        marks = ",".join("?" * len(LIVE_STATES))
        rows = await self.db.fetchall(
            "SELECT DISTINCT r.groups FROM instances i JOIN reservations r ON r.reservation_id = i.reservation_id"
            f" WHERE r.owner_id = ? AND i.state IN ({marks})",
            (owner_id, *LIVE_STATES),
        )
        return any(name in json.loads(row[0]) for row in rows)  # groups: a JSON list of names

    # --- changes -------------------------------------------------------------------------------------------
    async def create(self, owner_id: str, name: str, description: str, tags: list[tuple[str, Any]]) -> str:
        """A new group (with its tags); InvalidGroup.Duplicate if the account has one of that name."""
        await self.ensure_default(owner_id)
        group_id = new_id("sg")
        row = {"group_id": group_id, "owner_id": owner_id, "name": name, "description": description,
               "created_at": time.time()}  # fmt: skip
        duplicate = ComputeError("InvalidGroup.Duplicate", f"The security group '{name}' already exists")
        await self.tags.insert_named("security_groups", "group_id", row, "security-group", tags, duplicate)
        log.info("account %s created security group %s (%s)", owner_id, name, group_id)
        return group_id

    async def delete(self, owner_id: str, group: dict[str, Any]) -> None:
        """Delete one of the account's groups (and its tags), unless instances or other groups use it."""
        if group["name"] == DEFAULT:
            raise ComputeError("CannotDelete", "the default security group cannot be deleted")
        if await self.in_use(owner_id, group["name"]):
            raise ComputeError(
                "InvalidGroup.InUse", f"There are active instances using security group '{group['name']}'"
            )
        async with self.db.transaction() as conn:
            async with conn.execute(
                "SELECT DISTINCT group_id FROM security_group_rules WHERE source_group_id = ? AND group_id != ?",
                (group["group_id"], group["group_id"]),
            ) as cursor:
                users = [row[0] for row in await cursor.fetchall()]
            if users:
                raise ComputeError(
                    "InvalidGroup.InUse", f"Group {group['group_id']} is used by groups: {' '.join(users[:10])}"
                )
            await conn.execute("DELETE FROM security_groups WHERE group_id = ?", (group["group_id"],))
            await conn.execute("DELETE FROM tags WHERE resource_id = ?", (group["group_id"],))
        log.info("account %s deleted security group %s (%s)", owner_id, group["name"], group["group_id"])
        await self._notify(owner_id, group["group_id"])

    async def authorize(self, owner_id: str, group_id: str, wanted: list[Rule]) -> None:
        async with self.db.transaction() as conn:
            async with conn.execute(
                "SELECT protocol, from_port, to_port, cidr, source_group_id FROM security_group_rules"
                " WHERE group_id = ?",
                (group_id,),
            ) as cursor:
                existing = {tuple(row) for row in await cursor.fetchall()}
            for rule in wanted:
                if rule.key in existing:
                    raise ComputeError(
                        "InvalidPermission.Duplicate", f'the specified rule "peer: {rule.describe()}" already exists'
                    )
            if len(existing) + len(wanted) > MAX_RULES_PER_GROUP:
                raise ComputeError(
                    "RulesPerSecurityGroupLimitExceeded", f"A group has at most {MAX_RULES_PER_GROUP} rules"
                )
            await conn.executemany(
                "INSERT INTO security_group_rules(group_id, protocol, from_port, to_port, cidr, source_group_id)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(group_id, *rule.key) for rule in wanted],
            )
        log.info("security group %s: authorized %d rule(s)", group_id, len(wanted))
        await self._notify(owner_id, group_id)

    async def revoke(self, owner_id: str, group_id: str, wanted: list[Rule]) -> None:
        async with self.db.transaction() as conn:
            for rule in wanted:
                cursor = await conn.execute(
                    "DELETE FROM security_group_rules WHERE group_id = ? AND protocol = ? AND from_port = ?"
                    " AND to_port = ? AND cidr = ? AND source_group_id = ?",
                    (group_id, *rule.key),
                )
                if cursor.rowcount == 0:
                    raise ComputeError(
                        "InvalidPermission.NotFound",
                        f"The specified rule does not exist in this security group: {rule.describe()}",
                    )
        log.info("security group %s: revoked %d rule(s)", group_id, len(wanted))
        await self._notify(owner_id, group_id)
