"""Bucket names (S3's naming rules) and object keys (UTF-8, at most 1024 bytes, no NUL)."""

from __future__ import annotations

import ipaddress
import re

from services.walrus.s3.errors import S3Error

MAX_KEY_BYTES = 1024
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def check_bucket(name: str) -> None:
    bad = (
        not _BUCKET.match(name)
        or ".." in name
        or ".-" in name
        or "-." in name
        or name.startswith(("xn--", "sthree-"))
        or name.endswith(("-s3alias", "--ol-s3"))
    )
    if not bad:
        try:
            ipaddress.IPv4Address(name)
            bad = True
        except ValueError:
            pass
    if bad:
        raise S3Error("InvalidBucketName", BucketName=name[:100])


def check_key(key: str) -> None:
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise S3Error("InvalidArgument", "the object key is not valid UTF-8", ArgumentName="key") from None
    if size > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError", Size=size, MaxSizeAllowed=MAX_KEY_BYTES)
    if "\x00" in key:
        raise S3Error("InvalidArgument", "the object key contains a NUL character", ArgumentName="key")
