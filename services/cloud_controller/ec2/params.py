"""EC2 Query parameters -> a dict shaped like the operation's botocore input shape.

EC2 flattens its input: a structure member is `Prefix.Name` (the member's `queryName`, else its capitalized
`locationName`, else the member name, exactly as botocore's EC2Serializer names it) and list items are
`Prefix.1`, `Prefix.2`, ... So `IpPermissions.1.IpRanges.1.CidrIp=10.0.0.0/8` becomes
`{"IpPermissions": [{"IpRanges": [{"CidrIp": "10.0.0.0/8"}]}]}`.

Lenient where old clients differ: a list given without an index (`InstanceId=i-1`) is a one-item list, an
unknown parameter is ignored, and list indexes need not be contiguous (they are ordered by number).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Any

from botocore.model import Shape

from services.cloud_controller.ec2.errors import Ec2Error, invalid, missing

MAX_PARAMS = 1000  # parameters in one request
MAX_KEY_LENGTH = 256
MAX_INDEX = 1000  # the highest list index accepted (`Filter.1000`)
MAX_DEPTH = 10
# Parameters that belong to the protocol, not to the action.
PROTOCOL_PARAMS = frozenset(
    {"Action", "Version", "AWSAccessKeyId", "SignatureVersion", "SignatureMethod", "Signature", "Timestamp", "Expires"}
)

Tree = dict[str, "Tree | str"]


def _too_many(what: str) -> Ec2Error:
    return Ec2Error("InvalidParameterValue", f"too many {what} (the limit is {MAX_PARAMS})")


def build_tree(params: dict[str, str]) -> Tree:
    """Split dotted keys into a nested dict: {"A.1.B": v} -> {"A": {"1": {"B": v}}}."""
    root: Tree = {}
    for key, value in params.items():
        if key in PROTOCOL_PARAMS or key.startswith("X-Amz-"):
            continue
        if len(key) > MAX_KEY_LENGTH:
            raise invalid("name", key, "Parameter names are limited to 256 characters.")
        parts = key.split(".")
        if len(parts) > MAX_DEPTH or not all(parts):
            raise invalid("name", key, "Malformed parameter name.")
        node = root
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif isinstance(child, str):
                # `Name` and `Name.1` both given: the indexed form wins, the bare one becomes item "0".
                child = node[part] = {"0": child} if child else {}
            node = child
        last = parts[-1]
        if isinstance(node.get(last), dict):
            node[last]["0"] = value  # type: ignore[index]
        else:
            node[last] = value
    return root


def query_name(name: str, shape: Shape) -> str:
    """The parameter name botocore's EC2Serializer uses for a member."""
    serialization = shape.serialization
    if "queryName" in serialization:
        return str(serialization["queryName"])
    if "name" in serialization:
        location = str(serialization["name"])
        return location[0].upper() + location[1:]
    return name


def parse(shape: Shape | None, params: dict[str, str]) -> dict[str, Any]:
    """Parse request parameters for an operation's input shape; raise Ec2Error for bad or missing input."""
    if len(params) > MAX_PARAMS:
        raise _too_many("parameters")
    if shape is None:
        return {}
    return _structure(shape, build_tree(params), "")


def _structure(shape: Shape, node: Tree | str, path: str) -> dict[str, Any]:
    if isinstance(node, str):
        if node == "":
            node = {}
        else:
            raise invalid(path.rstrip("."), node, "A structure is expected.")
    result: dict[str, Any] = {}
    aliases = _aliases(shape)
    for member, member_shape in shape.members.items():
        found = None
        for name in aliases[member]:
            if name in node:
                found = node[name]
                break
        if found is not None:
            result[member] = _value(member_shape, found, f"{path}{aliases[member][0]}")
    for member in shape.required_members:
        if member not in result:
            raise missing(f"{path}{aliases[member][0]}")
    return result


_ALIAS_CACHE: dict[int, dict[str, tuple[str, ...]]] = {}


def _aliases(shape: Shape) -> dict[str, tuple[str, ...]]:
    """Names each member is accepted under: the serializer's name first, then the member name itself."""
    cached = _ALIAS_CACHE.get(id(shape))
    if cached is None:
        cached = {}
        for member, member_shape in shape.members.items():
            names = [query_name(member, member_shape)]
            if member not in names:
                names.append(member)
            cached[member] = tuple(names)
        _ALIAS_CACHE[id(shape)] = cached
    return cached


def _value(shape: Shape, node: Tree | str, path: str) -> Any:
    kind = shape.type_name
    if kind == "structure":
        return _structure(shape, node, path + ".")
    if kind == "list":
        return _list(shape, node, path)
    if kind == "map":
        return _map(shape, node, path)
    if not isinstance(node, str):
        raise invalid(path, "(a list)", "A single value is expected.")
    return _scalar(shape, node, path)


def _indexed(node: Tree, path: str) -> list[tuple[int, Tree | str]]:
    items = []
    for key, child in node.items():
        if not key.isdigit() or len(key) > 5 or int(key) > MAX_INDEX:
            raise invalid(f"{path}.{key}", key, f"List indexes are integers from 1 to {MAX_INDEX}.")
        items.append((int(key), child))
    items.sort(key=lambda item: item[0])
    return items


def _list(shape: Shape, node: Tree | str, path: str) -> list[Any]:
    if isinstance(node, str):
        # An old flat form without index, e.g. `InstanceId=i-1`; an empty value means an empty list.
        return [] if node == "" else [_value(shape.member, node, path)]
    return [_value(shape.member, child, f"{path}.{index}") for index, child in _indexed(node, path)]


def _map(shape: Shape, node: Tree | str, path: str) -> dict[str, Any]:
    if isinstance(node, str):
        return {}
    result = {}
    key_name = shape.key.serialization.get("name", "key")
    value_name = shape.value.serialization.get("name", "value")
    for index, entry in _indexed(node, path):
        if not isinstance(entry, dict) or key_name not in entry:
            raise missing(f"{path}.{index}.{key_name}")
        key = _value(shape.key, entry[key_name], f"{path}.{index}.{key_name}")
        result[key] = _value(shape.value, entry.get(value_name, ""), f"{path}.{index}.{value_name}")
    return result


def _scalar(shape: Shape, text: str, path: str) -> Any:
    kind = shape.type_name
    if kind == "string":
        return text
    if kind in ("integer", "long"):
        try:
            if len(text) > 20:
                raise ValueError
            return int(text)
        except ValueError:
            raise invalid(path, text, "An integer is expected.") from None
    if kind == "boolean":
        lowered = text.lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0", ""):
            return False
        raise invalid(path, text, "true or false is expected.")
    if kind in ("float", "double"):
        try:
            return float(text)
        except ValueError:
            raise invalid(path, text, "A number is expected.") from None
    if kind == "timestamp":
        try:
            stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise invalid(path, text, "An ISO 8601 time is expected.") from None
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)
    if kind == "blob":
        # Base64 as botocore sends it; raw text (e.g. an OpenSSH public key) from clients that do not encode.
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return text.encode()
    return text
