"""Tags: CreateTags, DeleteTags, DescribeTags, and the tag store other actions use.

Tags live in the `tags` table (resource_id, key, value, owner_id, resource_type); a resource's tags belong to
its owner account. A resource type becomes taggable by registering its id prefix with a function that says
which of some ids the account owns:

    from services.cloud_controller.actions import tags
    tags.register("i", "instance", owned_instances, "InvalidInstanceID.NotFound")
    # owned_instances(db, owner_id, ids) -> set of those ids the account owns

Store API for other actions:
- `await tags.tags_for(db, ids)` -> {resource_id: [{"Key": k, "Value": v}, ...]} (the `Tags` member of answers),
- `await tags.ids_matching(db, owner_id, filters.tags)` -> set of resource ids matching every `tag:KEY`,
  `tag-key` and `tag-value` filter (None if there are no tag filters), to intersect with a describe's ids,
- `await tags.put(db, owner_id, resource_type, ids, [{"Key", "Value"}])` for TagSpecifications at creation
  (`tags.put_in(conn, ...)` inside a transaction you already hold: the lock is not re-entrant),
- `tags.tag_specifications(params, "instance")` -> the validated tags of TagSpecifications for that type,
- `await tags.forget(db, ids)` when resources are deleted for good.
"""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from common.ids import is_id
from services.cloud_controller.actions import Context, action
from services.cloud_controller.ec2.errors import Ec2Error, invalid
from services.cloud_controller.ec2.filters import Filters, matches

MAX_TAGS_PER_RESOURCE = 50
MAX_KEY = 128
MAX_VALUE = 256
MAX_RESOURCES = 1000
DESCRIBE_PAGE_MAX = 1000

Owned = Callable[[Any, str, list[str]], Awaitable[set[str]]]


@dataclass(frozen=True)
class ResourceType:
    prefix: str
    name: str  # EC2's resource-type value: instance, image, security-group, key-pair
    owned: Owned
    not_found: str  # the error code for an id that does not exist (or is not the caller's)


RESOURCE_TYPES: dict[str, ResourceType] = {}


def register(prefix: str, name: str, owned: Owned, not_found: str) -> None:
    RESOURCE_TYPES[prefix] = ResourceType(prefix, name, owned, not_found)


def resource_type(resource_id: str) -> ResourceType | None:
    prefix, sep, _ = resource_id.partition("-")
    return RESOURCE_TYPES.get(prefix.lower()) if sep else None


def _owned_in(table: str, id_column: str, extra: str = "") -> Owned:
    """An ownership check over another part's table (instances, images): ids in `table` owned by the account."""

    async def owned(db: Any, owner_id: str, ids: list[str]) -> set[str]:
        marks = ",".join("?" * len(ids))
        try:
            rows = await db.fetchall(
                f"SELECT {id_column} FROM {table} WHERE owner_id = ? AND {id_column} IN ({marks}){extra}",
                (owner_id, *[i.lower() for i in ids]),
            )
        except sqlite3.OperationalError:  # the table is not there (yet)
            return set()
        found = {row[0] for row in rows}
        return {i for i in ids if i.lower() in found}

    return owned


# Instances and images live in the compute tables (0002_compute.sql); their module may register its own checks.
register("i", "instance", _owned_in("instances", "instance_id"), "InvalidInstanceID.NotFound")
for _prefix in ("emi", "eki", "eri"):
    register(_prefix, "image", _owned_in("images", "image_id", " AND state != 'deregistered'"), "InvalidAMIID.NotFound")


# --- the store -------------------------------------------------------------------------------------------
async def tags_for(db: Any, resource_ids: Iterable[str]) -> dict[str, list[dict[str, str]]]:
    ids = list(dict.fromkeys(resource_ids))
    found: dict[str, list[dict[str, str]]] = {}
    for start in range(0, len(ids), 500):  # SQLite's parameter limit
        chunk = ids[start : start + 500]
        rows = await db.fetchall(
            f"SELECT resource_id, key, value FROM tags WHERE resource_id IN ({','.join('?' * len(chunk))})"
            " ORDER BY resource_id, key",
            chunk,
        )
        for row in rows:
            found.setdefault(row["resource_id"], []).append({"Key": row["key"], "Value": row["value"]})
    return found


async def ids_matching(db: Any, owner_id: str, tag_filters: dict[str, list[str]]) -> set[str] | None:
    """Ids of the account's resources matching all tag filters; None when there are none."""
    if not tag_filters:
        return None
    rows = await db.fetchall("SELECT resource_id, key, value FROM tags WHERE owner_id = ?", (owner_id,))
    by_resource: dict[str, dict[str, str]] = {}
    for row in rows:
        by_resource.setdefault(row["resource_id"], {})[row["key"]] = row["value"]
    return {rid for rid, tagset in by_resource.items() if _tags_match(tagset, tag_filters)}


def _tags_match(tagset: dict[str, str], tag_filters: dict[str, list[str]]) -> bool:
    for name, values in tag_filters.items():
        if name == "tag-key":
            ok = any(matches(key, values) for key in tagset)
        elif name == "tag-value":
            ok = any(matches(value, values) for value in tagset.values())
        else:
            key = name[len("tag:") :]
            ok = key in tagset and matches(tagset[key], values)
        if not ok:
            return False
    return True


def check_tags(tag_list: list[dict[str, Any]], for_delete: bool = False) -> list[tuple[str, str | None]]:
    """Validate [{"Key", "Value"}]: (key, value) pairs; value None on delete means any value."""
    pairs = []
    for tag in tag_list:
        key = tag.get("Key")
        if key is None or key == "":
            raise Ec2Error("InvalidParameterValue", "Tag keys must be 1 to 128 characters")
        if len(key) > MAX_KEY:
            raise invalid("Tag.Key", key, "Tag keys are at most 128 characters.")
        if not for_delete and key.lower().startswith("aws:"):
            raise Ec2Error("InvalidParameterValue", "Tag keys starting with 'aws:' are reserved for internal use")
        value = tag.get("Value")
        if value is not None and len(value) > MAX_VALUE:
            raise invalid("Tag.Value", value, "Tag values are at most 256 characters.")
        pairs.append((key, value if for_delete else (value or "")))
    return pairs


async def put(db: Any, owner_id: str, type_name: str, resource_ids: list[str], tag_list: list[dict]) -> None:
    """Set tags on resources the caller has already checked (e.g. just created), in a transaction of its own."""
    pairs = check_tags(tag_list)
    if pairs and resource_ids:
        async with db.transaction() as conn:
            await put_in(conn, owner_id, [(rid, type_name) for rid in resource_ids], pairs)


async def put_in(conn: Any, owner_id: str, resources: list[tuple[str, str]], pairs: list[tuple[str, Any]]) -> None:
    """Inside an open transaction (`conn` from `db.transaction()`): set (key, value) pairs on (id, type) resources."""
    for rid, type_name in resources:
        await conn.executemany(
            "INSERT INTO tags(resource_id, key, value, owner_id, resource_type) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(resource_id, key) DO UPDATE SET value = excluded.value",
            [(rid, key, value or "", owner_id, type_name) for key, value in pairs],
        )
        async with conn.execute("SELECT COUNT(*) FROM tags WHERE resource_id = ?", (rid,)) as cursor:
            count = (await cursor.fetchone())[0]
        if count > MAX_TAGS_PER_RESOURCE:
            raise Ec2Error("TagLimitExceeded", f"The maximum number of tags per resource is {MAX_TAGS_PER_RESOURCE}")


async def forget(db: Any, resource_ids: Iterable[str]) -> None:
    ids = list(resource_ids)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        await db.execute(f"DELETE FROM tags WHERE resource_id IN ({','.join('?' * len(chunk))})", chunk)


def tag_specifications(params: dict[str, Any], type_name: str) -> list[dict]:
    """The tags of `TagSpecifications` for `type_name` (others are an error, as EC2 answers)."""
    tag_list: list[dict] = []
    for spec in params.get("TagSpecifications") or []:
        if spec.get("ResourceType") != type_name:
            raise Ec2Error(
                "InvalidParameterValue",
                f"'{str(spec.get('ResourceType'))[:32]}' is not a valid taggable resource type for this operation.",
            )
        tag_list.extend(spec.get("Tags") or [])
    check_tags(tag_list)
    return tag_list


async def _resolve(ctx: Context, resource_ids: list[str]) -> dict[str, ResourceType]:
    if not resource_ids:
        raise Ec2Error("MissingParameter", "The request must contain the parameter ResourceId")
    if len(resource_ids) > MAX_RESOURCES:
        raise Ec2Error("InvalidParameterValue", f"At most {MAX_RESOURCES} resources per request")
    by_type: dict[str, list[str]] = {}
    kinds: dict[str, ResourceType] = {}
    for rid in resource_ids:
        kind = resource_type(rid)
        if kind is None or not is_id(rid):
            raise Ec2Error("InvalidID", f"The ID '{rid[:64]}' is not valid")
        kinds[rid] = kind
        by_type.setdefault(kind.prefix, []).append(rid)
    for prefix, ids in by_type.items():
        kind = RESOURCE_TYPES[prefix]
        owned = await kind.owned(ctx.db, ctx.owner_id, ids)
        missing = [rid for rid in ids if rid not in owned]
        if missing:
            raise Ec2Error(kind.not_found, f"The {kind.name} ID '{missing[0][:64]}' does not exist")
    return kinds


# --- actions ---------------------------------------------------------------------------------------------
@action("CreateTags")
async def create_tags(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    resource_ids = params["Resources"]
    kinds = await _resolve(ctx, resource_ids)
    pairs = check_tags(params["Tags"])
    if not pairs:
        raise Ec2Error("MissingParameter", "The request must contain the parameter Tag")
    async with ctx.db.transaction() as conn:
        await put_in(conn, ctx.owner_id, [(rid, kinds[rid].name) for rid in dict.fromkeys(resource_ids)], pairs)
    return {}


@action("DeleteTags")
async def delete_tags(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    resource_ids = params["Resources"]
    await _resolve(ctx, resource_ids)
    pairs = check_tags(params.get("Tags") or [], for_delete=True)
    async with ctx.db.transaction() as conn:
        for rid in dict.fromkeys(resource_ids):
            if not pairs:
                await conn.execute("DELETE FROM tags WHERE resource_id = ? AND owner_id = ?", (rid, ctx.owner_id))
            for key, value in pairs:
                if value is None:
                    await conn.execute(
                        "DELETE FROM tags WHERE resource_id = ? AND owner_id = ? AND key = ?", (rid, ctx.owner_id, key)
                    )
                else:
                    await conn.execute(
                        "DELETE FROM tags WHERE resource_id = ? AND owner_id = ? AND key = ? AND value = ?",
                        (rid, ctx.owner_id, key, value),
                    )
    return {}


@action("DescribeTags")
async def describe_tags(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    filters = Filters.parse(params.get("Filters"), {"key", "value", "resource-id", "resource-type"}, tags=False)
    limit = params.get("MaxResults")
    if limit is not None and not 5 <= limit <= DESCRIBE_PAGE_MAX:
        raise invalid("MaxResults", limit, "MaxResults must be between 5 and 1000.")
    after = _decode_token(params.get("NextToken"))
    rows = await ctx.db.fetchall(
        "SELECT resource_id, key, value, resource_type FROM tags WHERE owner_id = ? AND (resource_id, key) > (?, ?)"
        " ORDER BY resource_id, key",
        (ctx.owner_id, *after),
    )
    answer: list[dict[str, str]] = []
    next_token = None
    for row in rows:
        values = {
            "key": row["key"],
            "value": row["value"],
            "resource-id": row["resource_id"],
            "resource-type": row["resource_type"],
        }
        if not filters.match_all(values):
            continue
        if limit is not None and len(answer) == limit:
            last = answer[-1]
            next_token = _encode_token(last["ResourceId"], last["Key"])
            break
        answer.append(
            {
                "ResourceId": row["resource_id"],
                "ResourceType": row["resource_type"],
                "Key": row["key"],
                "Value": row["value"],
            }
        )
    return {"Tags": answer, "NextToken": next_token}


def _encode_token(resource_id: str, key: str) -> str:
    return base64.urlsafe_b64encode(f"{resource_id}\0{key}".encode()).decode()


def _decode_token(token: str | None) -> tuple[str, str]:
    if not token:
        return ("", "")
    try:
        resource_id, key = base64.urlsafe_b64decode(token.encode()).decode().split("\0", 1)
    except (ValueError, UnicodeDecodeError):
        raise Ec2Error("InvalidNextToken", "The token is not valid") from None
    return resource_id, key
