"""The Condition operators of the AWS policy language: string, numeric, date, IP, bool, binary, ARN and Null,
with the `...IfExists` suffix and the `ForAllValues:` / `ForAnyValue:` set prefixes.

A condition is compiled once when the policy is stored (values parsed, patterns turned into regexes, bad values
refused) and then tested against a request's key values many times."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

# Operators whose meaning is "none of the values matches": a missing key makes them true.
NEGATED = frozenset(
    {"StringNotEquals", "StringNotEqualsIgnoreCase", "StringNotLike", "NumericNotEquals", "DateNotEquals",
     "NotIpAddress", "ArnNotEquals", "ArnNotLike"}
)  # fmt: skip
STRING_OPS = frozenset(
    {"StringEquals", "StringNotEquals", "StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase", "StringLike",
     "StringNotLike", "ArnEquals", "ArnNotEquals", "ArnLike", "ArnNotLike"}
)  # fmt: skip
NUMERIC_OPS = frozenset(
    {"NumericEquals", "NumericNotEquals", "NumericLessThan", "NumericLessThanEquals", "NumericGreaterThan",
     "NumericGreaterThanEquals"}
)  # fmt: skip
DATE_OPS = frozenset({op.replace("Numeric", "Date") for op in NUMERIC_OPS})
OTHER_OPS = frozenset({"Bool", "BinaryEquals", "IpAddress", "NotIpAddress", "Null"})
OPERATORS = STRING_OPS | NUMERIC_OPS | DATE_OPS | OTHER_OPS
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "Equals": lambda a, b: a == b,
    "NotEquals": lambda a, b: a == b,  # negation is applied over all values
    "LessThan": lambda a, b: a < b,
    "LessThanEquals": lambda a, b: a <= b,
    "GreaterThan": lambda a, b: a > b,
    "GreaterThanEquals": lambda a, b: a >= b,
}
_VARIABLE = re.compile(r"\$\{([^}]*)\}")
# Lookup of a condition key's values in the request: None when the request does not carry the key.
Lookup = Callable[[str], "Sequence[str] | None"]


IP_OPS = frozenset({"IpAddress", "NotIpAddress"})
MEMO_ENTRIES = 256  # outcomes remembered per condition


class BadCondition(ValueError):
    pass


# Request values parsed once: the same client address or second comes back request after request.
@lru_cache(maxsize=1024)
def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.split("%")[0])
    except ValueError:
        return None


@lru_cache(maxsize=1024)
def _date_value(value: str) -> float | None:
    try:
        return parse_date(value)
    except BadCondition:
        return None


def _number_value(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def has_variables(text: str) -> bool:
    return "${" in text


def variable_names(text: str) -> set[str]:
    """The condition keys a text's policy variables read (lower case)."""
    return {name.lower() for name in _VARIABLE.findall(text) if name not in ("*", "?", "$")}


def substitute(text: str, lookup: Lookup) -> str:
    """Policy variables: ${aws:username} & co, and the escapes ${*} ${?} ${$}."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in ("*", "?", "$"):
            return "\x00" + name  # a literal character, kept apart from wildcards until the pattern is built
        values = lookup(name.lower())
        return values[0] if values else ""

    return _VARIABLE.sub(one, text)


@lru_cache(maxsize=4096)
def wildcard(pattern: str, ignore_case: bool = False) -> re.Pattern[str]:
    """`*` any run of characters, `?` one character; \\x00-escaped characters are literal."""
    out, index = [], 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\x00" and index + 1 < len(pattern):
            out.append(re.escape(pattern[index + 1]))
            index += 2
            continue
        out.append(".*" if char == "*" else "." if char == "?" else re.escape(char))
        index += 1
    return re.compile("".join(out), re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def parse_date(text: str) -> float:
    """ISO 8601 (with or without time and zone) or epoch seconds."""
    text = text.strip()
    if re.fullmatch(r"-?\d+(\.\d+)?", text) and not re.fullmatch(r"\d{8}", text):
        return float(text)
    value = text.replace("Z", "+00:00")
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        try:
            moment = dt.datetime.strptime(text, "%Y%m%dT%H%M%SZ")
        except ValueError:
            raise BadCondition(f"invalid date {text[:64]!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise BadCondition(f"invalid number {text[:64]!r}") from None


@dataclass(frozen=True)
class Condition:
    """One operator applied to one key with one or more values."""

    operator: str  # the base operator, without IfExists or a set prefix
    key: str  # lower case: condition keys are case-insensitive
    values: tuple[Any, ...]  # parsed per operator
    if_exists: bool = False
    set_mode: str = ""  # "", "ForAllValues" or "ForAnyValue"
    variables: bool = False  # string values that hold ${...}
    _memo: dict[tuple[str, ...] | None, bool] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def test(self, lookup: Lookup) -> bool:
        found = lookup(self.key)
        if self.variables:  # the outcome depends on other keys too
            return self._evaluate(found, lookup)
        # The outcome depends on the key's values alone, and those repeat (the same client address, agent,
        # second...): remember it.
        memo_key = None if found is None else tuple(found)  # a tuple already from RequestKeys: no copy
        outcome = self._memo.get(memo_key)
        if outcome is None:
            outcome = self._evaluate(found, lookup)
            if len(self._memo) >= MEMO_ENTRIES:
                self._memo.clear()
            self._memo[memo_key] = outcome
        return outcome

    def _evaluate(self, found: Sequence[str] | None, lookup: Lookup) -> bool:
        if self.operator == "Null":
            return (found is None) is bool(self.values[0])
        if found is None or (self.set_mode and not found):
            if self.set_mode == "ForAllValues":
                return True
            if self.set_mode == "ForAnyValue":
                return False
            return self.if_exists or self.operator in NEGATED
        if not self.set_mode and len(found) == 1:
            return self._one(found[0], lookup)
        if self.set_mode == "ForAllValues":
            return all(self._one(value, lookup) for value in found)
        if self.set_mode == "ForAnyValue":
            return any(self._one(value, lookup) for value in found)
        # A single-valued key; several values (a multi-valued key without a set prefix) must all pass.
        return all(self._one(value, lookup) for value in found)

    def _one(self, value: str, lookup: Lookup) -> bool:
        hit = False
        for wanted in self.values:
            if self._match(value, wanted, lookup):
                hit = True
                break
        return not hit if self.operator in NEGATED else hit

    def _match(self, value: str, wanted: Any, lookup: Lookup) -> bool:
        op = self.operator
        if op in IP_OPS:
            address = _address(value)
            return address is not None and address.version == wanted.version and address in wanted
        if op in STRING_OPS:
            pattern = substitute(wanted, lookup) if self.variables else wanted
            if op.endswith("Like"):
                return wildcard(pattern).fullmatch(value) is not None
            if op.endswith("IgnoreCase"):
                return value.casefold() == pattern.replace("\x00", "").casefold()
            return value == pattern.replace("\x00", "")
        if op in NUMERIC_OPS or op in DATE_OPS:
            number = _date_value(value) if op in DATE_OPS else _number_value(value)
            return number is not None and _COMPARE[op[7:] if op[0] == "N" else op[4:]](number, wanted)
        if op == "Bool":
            return bool(value.lower() == wanted)
        if op == "BinaryEquals":
            return bool(value == wanted)
        return False


def compile_block(block: Any) -> tuple[Condition, ...]:
    """A statement's Condition object -> conditions (all must hold). BadCondition for anything malformed."""
    if not isinstance(block, dict):
        raise BadCondition("Condition must be an object")
    out: list[Condition] = []
    for full_op, keys in block.items():
        set_mode, _, op = str(full_op).rpartition(":")
        if set_mode not in ("", "ForAllValues", "ForAnyValue"):
            raise BadCondition(f"Invalid Condition type : {full_op}")
        if_exists = op.endswith("IfExists") and op != "IfExists"
        base = op.removesuffix("IfExists") if if_exists else op
        if base not in OPERATORS or (if_exists and base == "Null"):
            raise BadCondition(f"Invalid Condition type : {full_op}")
        if not isinstance(keys, dict) or not keys:
            raise BadCondition(f"Condition {full_op} must map keys to values")
        for key, raw_values in keys.items():
            key = str(key)
            if ":" not in key or len(key) > 256:
                raise BadCondition(f"Policy has an invalid condition key: {key[:64]}")
            values = raw_values if isinstance(raw_values, list) else [raw_values]
            if not values or len(values) > 1000:
                raise BadCondition(f"Condition {full_op} on {key} needs values")
            parsed = tuple(_parse_value(base, v) for v in values)
            variables = base in STRING_OPS and any(has_variables(v) for v in parsed)
            out.append(Condition(base, key.lower(), parsed, if_exists, set_mode, variables))
    return tuple(out)


def _parse_value(op: str, value: Any) -> Any:
    if isinstance(value, (dict, list)) or value is None:
        raise BadCondition(f"invalid value for {op}")
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if op in STRING_OPS:
        if op.endswith("Like") and not has_variables(text):
            wildcard(text)
        return text
    if op in NUMERIC_OPS:
        return _number(text)
    if op in DATE_OPS:
        return parse_date(text)
    if op == "Bool":
        if text.lower() not in ("true", "false"):
            raise BadCondition(f"Bool takes true or false, not {text[:32]!r}")
        return text.lower()
    if op == "Null":
        if text.lower() not in ("true", "false"):
            raise BadCondition(f"Null takes true or false, not {text[:32]!r}")
        return text.lower() == "true"
    if op == "BinaryEquals":
        try:
            base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise BadCondition("BinaryEquals takes base64 values") from None
        return text
    try:  # IpAddress / NotIpAddress
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise BadCondition(f"invalid IP address or CIDR {text[:64]!r}") from None
