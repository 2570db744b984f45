"""MaxResults/NextToken paging for Describe actions whose answers are ordered by a string key (an id, a name).

EC2 documents MaxResults bounds per action (5..1000 for most, 5..100 for DescribeInstanceTypes); the token is
the key of the last item given, opaque to clients.

    page, token = paging.cut(images, key=lambda i: i.image_id, params=params, low=5, high=1000)
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, TypeVar

from services.cloud_controller.ec2.errors import Ec2Error, invalid

T = TypeVar("T")
MAX_TOKEN = 1024


def check_max_results(params: dict[str, Any], low: int, high: int) -> int | None:
    limit = params.get("MaxResults")
    if limit is not None and not low <= limit <= high:
        raise invalid("MaxResults", limit, f"The value must be between {low} and {high}.")
    return limit


def cut(
    items: list[T], key: Callable[[T], str], params: dict[str, Any], low: int, high: int
) -> tuple[list[T], str | None]:
    """One page of `items` in `key` order and the token for the next; all of them as given when not paging."""
    limit = check_max_results(params, low, high)
    token = params.get("NextToken")
    if limit is None and not token:
        return items, None
    items = sorted(items, key=key)
    if token:
        after = _decode(token)
        items = [item for item in items if key(item) > after]
    if limit is None or len(items) <= limit:
        return items, None
    items = items[:limit]
    return items, base64.urlsafe_b64encode(key(items[-1]).encode()).decode()


def _decode(token: str) -> str:
    try:
        if len(token) > MAX_TOKEN:
            raise ValueError
        key = base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
        if not key:
            raise ValueError
        return key
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise Ec2Error("InvalidNextToken", "The token is not valid") from None
