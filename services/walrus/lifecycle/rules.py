"""One lifecycle rule as Walrus keeps it (JSON in the bucket's row) and the questions the sweep asks of it.

Days count as AWS counts them: an action N days after a moment (an object's creation, the time a version became
noncurrent, an upload's initiation) is due at the first midnight UTC at or after that moment plus N days (created
2014-01-15 10:30 UTC with 3 days: due 2014-01-19 00:00 UTC). `day` is 86,400 seconds except in tests, where a
shorter day keeps the same arithmetic (epoch 0 is a midnight UTC).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field


def due(start: float, days: int, day: float) -> float:
    """When an action `days` days after `start` is due: that moment, rounded up to the next midnight UTC."""
    return math.ceil((start + days * day) / day) * day


@dataclass(frozen=True)
class Rule:
    id: str
    enabled: bool
    prefix: str = ""
    legacy_prefix: bool = False  # given as <Prefix> outside a <Filter> (answered back the same way)
    size_greater: int | None = None
    size_less: int | None = None
    expiration_days: int | None = None
    expiration_date: float | None = None  # epoch seconds (midnight UTC)
    expired_delete_marker: bool = False
    noncurrent_days: int | None = None
    newer_noncurrent: int = 0  # how many noncurrent versions are kept whatever their age
    abort_days: int | None = None
    tags: dict[str, str] = field(default_factory=dict)  # an object must carry every one of them

    def covers(self, key: str, size: int | None = None) -> bool:
        """The rule applies to `key` (and, for an object, to its size); its tags are asked separately (the sweep
        reads a version's tags only for rules that name some)."""
        if not key.startswith(self.prefix):
            return False
        if size is not None:
            if self.size_greater is not None and not size > self.size_greater:
                return False
            if self.size_less is not None and not size < self.size_less:
                return False
        return True

    def tags_match(self, tags: dict[str, str]) -> bool:
        return all(tags.get(name) == value for name, value in self.tags.items())

    @property
    def expires_current(self) -> bool:
        return self.expiration_days is not None or self.expiration_date is not None

    def current_expired(self, created: float, now: float, day: float) -> bool:
        if self.expiration_days is not None and now >= due(created, self.expiration_days, day):
            return True
        return self.expiration_date is not None and now >= self.expiration_date

    def noncurrent_expired(self, noncurrent_since: float, newer_noncurrent: int, now: float, day: float) -> bool:
        """A noncurrent version (with `newer_noncurrent` noncurrent versions newer than it) is due."""
        if self.noncurrent_days is None or newer_noncurrent < self.newer_noncurrent:
            return False
        return now >= due(noncurrent_since, self.noncurrent_days, day)

    def upload_expired(self, initiated: float, now: float, day: float) -> bool:
        return self.abort_days is not None and now >= due(initiated, self.abort_days, day)


def rules_to_json(rules: list[Rule]) -> str:
    return json.dumps([asdict(rule) for rule in rules])


def rules_from_json(text: str) -> list[Rule]:
    return [Rule(**item) for item in json.loads(text)] if text else []
