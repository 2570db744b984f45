"""Tags: CreateTags, DeleteTags, DescribeTags, and the tag parameters other actions take.

The tags themselves live in the compute layer's tag store (`compute/tags.py`, `ctx.compute.tags`): `tags_for`,
`ids_matching`, `put`, `forget`, and the registry of taggable resource types. This module parses:
- `tags.tag_specifications(params, "instance")` -> the validated tags of TagSpecifications for that type,
- `tags.check_tags(tag_list)` -> validated (key, value) pairs for the store.
"""

from __future__ import annotations

import base64
from typing import Any

from common.ids import is_id
from services.cloud_controller.actions import Context, action
from services.cloud_controller.compute.tags import ResourceType
from services.cloud_controller.ec2.errors import Ec2Error, invalid
from services.cloud_controller.ec2.filters import Filters

MAX_KEY = 128
MAX_VALUE = 256
MAX_RESOURCES = 1000
DESCRIBE_PAGE_MAX = 1000


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


def tag_specifications(params: dict[str, Any], type_name: str) -> list[dict[str, Any]]:
    """The tags of `TagSpecifications` for `type_name` (others are an error, as EC2 answers)."""
    tag_list: list[dict[str, Any]] = []
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
    store = ctx.compute.tags
    by_type: dict[str, list[str]] = {}
    kinds: dict[str, ResourceType] = {}
    for rid in resource_ids:
        kind = store.resource_type(rid)
        if kind is None or not is_id(rid):
            raise Ec2Error("InvalidID", f"The ID '{rid[:64]}' is not valid")
        kinds[rid] = kind
        by_type.setdefault(kind.prefix, []).append(rid)
    await store.check_owned(ctx.owner_id, by_type)
    return kinds


# --- actions ---------------------------------------------------------------------------------------------
@action("CreateTags")
async def create_tags(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    resource_ids = params["Resources"]
    kinds = await _resolve(ctx, resource_ids)
    pairs = check_tags(params["Tags"])
    if not pairs:
        raise Ec2Error("MissingParameter", "The request must contain the parameter Tag")
    resources = [(rid, kinds[rid].name) for rid in dict.fromkeys(resource_ids)]
    await ctx.compute.tags.put(ctx.owner_id, resources, pairs)
    return {}


@action("DeleteTags")
async def delete_tags(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    resource_ids = params["Resources"]
    await _resolve(ctx, resource_ids)
    pairs = check_tags(params.get("Tags") or [], for_delete=True)
    await ctx.compute.tags.delete(ctx.owner_id, list(dict.fromkeys(resource_ids)), pairs)
    return {}


@action("DescribeTags")
async def describe_tags(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    filters = Filters.parse(params.get("Filters"), {"key", "value", "resource-id", "resource-type"}, tags=False)
    limit = params.get("MaxResults")
    if limit is not None and not 5 <= limit <= DESCRIBE_PAGE_MAX:
        raise invalid("MaxResults", limit, "MaxResults must be between 5 and 1000.")
    after = _decode_token(params.get("NextToken"))
    rows = await ctx.compute.tags.after(ctx.owner_id, *after)
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


async def tag_created(ctx: Context, type_name: str, resource_ids: list[str], tag_list: list[dict[str, Any]]) -> None:
    """TagSpecifications' tags (from `tag_specifications`) on resources the action has just created."""
    await ctx.compute.tags.put(ctx.owner_id, [(rid, type_name) for rid in resource_ids], check_tags(tag_list))
