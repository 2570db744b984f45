"""Bucket names (S3's naming rules) and object keys (UTF-8, at most 1024 bytes, no NUL; a new key also only
characters XML 1.0 can carry)."""

from __future__ import annotations

import ipaddress
import re

from services.walrus.s3.errors import S3Error
from services.walrus.s3.xml import NOT_XML

MAX_KEY_BYTES = 1024
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


_valid: set[str] = set()  # names already checked (the check runs on every request)


def check_bucket(name: str) -> None:
    if name in _valid:
        return
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
    if len(_valid) >= 10000:
        _valid.clear()
    _valid.add(name)


def check_key(key: str) -> None:
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise S3Error("InvalidArgument", "the object key is not valid UTF-8", ArgumentName="key") from None
    if size > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError", Size=size, MaxSizeAllowed=MAX_KEY_BYTES)
    if "\x00" in key:
        raise S3Error("InvalidArgument", "the object key contains a NUL character", ArgumentName="key")


def check_new_key(key: str) -> None:
    """A key an object is created under: also refused if a listing could not name it in well-formed XML (the
    listing and DeleteObjects documents are XML 1.0); keys stored before stay readable and deletable by URL."""
    check_key(key)
    bad = NOT_XML.search(key)
    if bad is not None:
        raise S3Error(
            "InvalidArgument",
            f"the object key contains U+{ord(bad.group()):04X}, which XML 1.0 cannot carry",
            ArgumentName="key",
        )
