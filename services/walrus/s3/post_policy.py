"""The policy document of a browser POST upload: its expiration and conditions, checked against the form.

Conditions, as S3 documents them: `{"field": "value"}` and `["eq", "$field", "value"]` (exact match),
`["starts-with", "$field", "prefix"]` (for Content-Type a comma-separated list whose every item must start with
it), `["content-length-range", min, max]`. Every form field except the signature, the file, the policy itself
and x-ignore-* fields must be named by a condition. Failures answer as S3 does: 403 AccessDenied "Invalid
according to Policy: ...", 400 InvalidPolicyDocument for a document that cannot be read."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass

from services.walrus.s3.errors import S3Error

# Fields no condition has to name (lower case).
EXEMPT = frozenset({"policy", "signature", "x-amz-signature", "awsaccesskeyid", "file"})
MAX_CONDITIONS = 1000


@dataclass(frozen=True)
class PostPolicy:
    expiration: float
    conditions: tuple[tuple[str, str, str], ...]  # (operator "eq" | "starts-with", field lower case, value)
    length_range: tuple[int, int] | None
    text: str  # the JSON, for error messages


def _invalid(message: str) -> S3Error:
    return S3Error("InvalidPolicyDocument", f"Invalid Policy: {message}")


def _refused(message: str) -> S3Error:
    return S3Error("AccessDenied", f"Invalid according to Policy: {message}")


def _expiration(value: object) -> float:
    if not isinstance(value, str):
        raise _invalid("Invalid 'expiration' value.")
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _invalid(f"Invalid 'expiration' value: '{value[:64]}'") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def _field(name: object) -> str:
    if not isinstance(name, str) or not name.startswith("$") or len(name) < 2:
        raise _invalid(f"Invalid condition field name: {str(name)[:64]}")
    return name[1:].lower()


def _integer(value: object) -> int:
    try:
        number: int = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise _invalid("Invalid content-length-range value.") from None
    if number < 0:
        raise _invalid("Invalid content-length-range value.")
    return number


def parse(encoded: str) -> PostPolicy:
    try:
        text = base64.b64decode(encoded.strip(), validate=True).decode()
        document = json.loads(text)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise _invalid("Invalid JSON.") from None
    if not isinstance(document, dict):
        raise _invalid("Invalid JSON.")
    if "expiration" not in document:
        raise _invalid("Policy missing expiration.")
    expiration = _expiration(document["expiration"])
    raw = document.get("conditions")
    if not isinstance(raw, list):
        raise _invalid("Policy missing conditions.")
    if len(raw) > MAX_CONDITIONS:
        raise _invalid("Too many conditions.")
    conditions: list[tuple[str, str, str]] = []
    length_range: tuple[int, int] | None = None
    for item in raw:
        if isinstance(item, dict):
            if len(item) != 1:
                raise _invalid("Invalid Simple-Condition: Simple-Conditions must have exactly one property specified.")
            name, value = next(iter(item.items()))
            if not isinstance(value, str):
                raise _invalid(f"Invalid Simple-Condition: value of {str(name)[:64]} must be a string.")
            conditions.append(("eq", str(name).lower(), value))
        elif isinstance(item, list) and item:
            operator = str(item[0]).lower()
            if operator == "content-length-range":
                if len(item) != 3:
                    raise _invalid("Invalid content-length-range condition.")
                low, high = _integer(item[1]), _integer(item[2])
                length_range = (low, high)
            elif operator in ("eq", "starts-with"):
                if len(item) != 3 or not isinstance(item[2], str):
                    raise _invalid(f"Invalid {operator} condition.")
                conditions.append((operator, _field(item[1]), item[2]))
            else:
                raise _invalid(f"Invalid condition operator: {operator[:32]}")
        else:
            raise _invalid("Invalid condition.")
    return PostPolicy(expiration, tuple(conditions), length_range, text)


def _condition_text(operator: str, name: str, value: str) -> str:
    return json.dumps([operator, "$" + name, value])


def check(policy: PostPolicy, fields: dict[str, str], bucket: str, now: float) -> None:
    """Refuse the form unless the policy is current and every condition holds and covers every field."""
    if now > policy.expiration:
        raise _refused("Policy expired.")
    named = set()
    for operator, name, value in policy.conditions:
        named.add(name)
        actual = bucket if name == "bucket" else fields.get(name)
        if actual is None:
            raise _refused(f"Policy Condition failed: {_condition_text(operator, name, value)}")
        if operator == "eq":
            ok = actual == value
        elif name == "content-type":
            ok = all(part.strip().startswith(value) for part in actual.split(","))
        else:
            ok = actual.startswith(value)
        if not ok:
            raise _refused(f"Policy Condition failed: {_condition_text(operator, name, value)}")
    extra = [n for n in fields if n not in named and n not in EXEMPT and not n.startswith("x-ignore-")]
    if extra:
        raise _refused(f"Extra input fields: {extra[0]}")
