"""EC2 filters: `Filter.N.Name` with `Filter.N.Value.M`, parsed by params.py into [{"Name", "Values"}].

Values match with EC2's wildcards (`*` any run, `?` one character, backslash escapes them); several values
of one filter are OR-ed, several filters AND-ed. `tag:KEY`, `tag-key` and `tag-value` are tag filters (see
`compute.tags.Tags.ids_matching`).

    filters = Filters.parse(params.get("Filters"), allowed={"key-name", "fingerprint"}, tags=True)
    if not filters.match("key-name", row["name"]): ...
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from services.cloud_controller.ec2.errors import Ec2Error

MAX_FILTERS = 50
MAX_VALUES = 200


@lru_cache(maxsize=4096)
def _pattern(value: str) -> re.Pattern[str] | None:
    """None if the value has no wildcard (then it is compared as is)."""
    if "*" not in value and "?" not in value:
        return None
    out, escaped = [], False
    for char in value:
        if escaped:
            out.append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        else:
            out.append(re.escape(char))
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def matches(value: Any, patterns: Iterable[str]) -> bool:
    text = value if isinstance(value, str) else _text(value)
    for wanted in patterns:
        pattern = _pattern(wanted)
        if pattern.match(text) if pattern is not None else text == wanted.replace("\\", ""):
            return True
    return False


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


@dataclass
class Filters:
    """Filters by name; `tags` holds the tag filters (`tag:KEY`, `tag-key`, `tag-value`) apart."""

    by_name: dict[str, list[str]] = field(default_factory=dict)
    tags: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: list[dict[str, Any]] | None, allowed: Iterable[str], tags: bool = True) -> Filters:
        """Validate names against `allowed` (InvalidParameterValue for others, as EC2 answers)."""
        allowed = set(allowed)
        result = cls()
        raw = raw or []
        if len(raw) > MAX_FILTERS:
            raise Ec2Error("FilterLimitExceeded", f"The maximum number of filters is {MAX_FILTERS}")
        for item in raw:
            name = item.get("Name")
            values = item.get("Values") or []
            if not name:
                raise Ec2Error("InvalidParameterValue", "A filter needs a Name")
            if len(values) > MAX_VALUES:
                raise Ec2Error("FilterLimitExceeded", f"The maximum number of values per filter is {MAX_VALUES}")
            if tags and (name.startswith("tag:") or name in ("tag-key", "tag-value")):
                result.tags.setdefault(name, []).extend(values)
            elif name in allowed:
                result.by_name.setdefault(name, []).extend(values)
            else:
                raise Ec2Error("InvalidParameterValue", f"The filter '{name[:64]}' is invalid")
        return result

    def __bool__(self) -> bool:
        return bool(self.by_name or self.tags)

    def match(self, name: str, value: Any) -> bool:
        """True if no filter `name` was given, or `value` (a scalar or a list of them) matches one value."""
        wanted = self.by_name.get(name)
        if wanted is None:
            return True
        if isinstance(value, list | tuple | set | frozenset):
            return any(matches(item, wanted) for item in value)
        return matches(value, wanted)

    def matcher(self, name: str) -> Callable[[Any], bool]:
        """`match(name, value)` as a function of the value, its patterns prepared once: for filtering thousands of
        objects (DescribeInstances)."""
        wanted = self.by_name.get(name)
        if wanted is None:
            return _always
        exact = frozenset(w.replace("\\", "") for w in wanted if _pattern(w) is None)
        patterns = [p for w in wanted if (p := _pattern(w)) is not None]

        def one(value: Any) -> bool:
            text = value if isinstance(value, str) else _text(value)
            return text in exact or any(p.match(text) for p in patterns)

        def test(value: Any) -> bool:
            if isinstance(value, list | tuple | set | frozenset):
                return any(one(item) for item in value)
            return one(value)

        return test

    def match_all(self, values: dict[str, Any]) -> bool:
        """Every given filter whose name is in `values` matches (filters not in `values` are ignored)."""
        return all(self.match(name, values[name]) for name in self.by_name if name in values)


def _always(value: Any) -> bool:
    return True
