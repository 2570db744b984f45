"""EC2-style resource ids: a prefix and 8 lowercase hex digits (`i-0a1b2c3d`).

Uniqueness is the caller's job: its store checks that a new id is not taken and asks again if it is.
"""

from __future__ import annotations

import re
import secrets

PREFIXES = frozenset(
    {
        "i",  # instance
        "r",  # reservation
        "emi",  # machine image
        "eki",  # kernel image
        "eri",  # ramdisk image
        "sg",  # security group
        "key",  # key pair
        "eipalloc",  # elastic IP allocation
        "eipassoc",  # elastic IP association
        "vol",  # volume
        "snap",  # snapshot
        "bun",  # bundle task
        "req",  # request id
        "cr",  # capacity reservation (an advance reservation lease)
        "sir",  # spot instance request (a best-effort lease)
    }
)
_ID = re.compile(r"^([a-z]+)-([0-9a-f]{8})$")


def new_id(prefix: str) -> str:
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    return f"{prefix}-{secrets.randbits(32):08x}"


def is_id(value: str, prefix: str | None = None) -> bool:
    """True if `value` is a well-formed id (with `prefix`, if given). Accepts Eucalyptus's uppercase hex."""
    match = _ID.match(value.lower()) if isinstance(value, str) and len(value) <= 20 else None
    if match is None or match.group(1) not in PREFIXES:
        return False
    return prefix is None or match.group(1) == prefix


def normalize(value: str) -> str:
    """Ids compare lowercase: `i-4F1C02AB` (Eucalyptus) and `i-4f1c02ab` are the same instance."""
    return value.lower()
