"""The one AWS Signature Version 4 core: what both front ends (the CLC's EC2 API, Walrus's S3 API) and the browser
POST policy check compute, so the canonical forms and the key derivation exist once.

Each front end keeps what is its API's own: where the date and credential come from, which service name its scope
must carry, how a failure is worded (EC2 or S3 error XML). Clients (tests, benchmarks) sign with botocore's signer,
never with this module, so a mistake here cannot hide behind the same mistake in the client.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
from collections.abc import Iterable
from urllib.parse import quote, unquote

ALGORITHM = "AWS4-HMAC-SHA256"
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")
_signing_keys: dict[tuple[str, str, str, str], bytes] = {}
_MAX_CACHED_KEYS = 1000


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The derived key for one day, region and service (cached: it is four HMACs per request otherwise)."""
    cache_key = (secret, date, region, service)
    key = _signing_keys.get(cache_key)
    if key is None:
        key = hmac.new(("AWS4" + secret).encode(), date.encode(), hashlib.sha256).digest()
        for part in (region, service, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        if len(_signing_keys) >= _MAX_CACHED_KEYS:
            _signing_keys.clear()
        _signing_keys[cache_key] = key
    return key


def hmac_hex(key: bytes, text: str) -> str:
    # An HMAC object, not the one-shot hmac.digest: the one-shot lets go of the interpreter lock around every call,
    # however short the text, and taking it back waits for whichever thread took it meanwhile (Walrus's database
    # and sync threads): about a sixth of the 4 KiB PUTs per second (issue 18). The object's update lets go only
    # from 2 KiB of text, which a string to sign never reaches.
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def raw_query_pairs(raw_query: str) -> list[tuple[str, str]]:
    """The query's names and values as sent (still percent-encoded)."""
    pairs = []
    for part in raw_query.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((name, value))
    return pairs


# parts seen before: the names and most values of a presigned URL's query (algorithm, credential, expiry, signed
# headers) come back with every URL a client signs, and a lookup is cheaper than even the unreserved-only match
_canonical_parts: dict[str, str] = {}


def canonical_part(raw: str) -> str:
    """A query name or value as sent -> its SigV4 form (decoded once, encoded once, RFC 3986 unreserved kept)."""
    found = _canonical_parts.get(raw)
    if found is None:
        found = raw if _UNRESERVED.fullmatch(raw) else quote(unquote(raw), safe="~")  # the first needs no step
        if len(raw) <= 256:
            if len(_canonical_parts) >= 4096:
                _canonical_parts.clear()
            _canonical_parts[raw] = found
    return found


def canonical_query(pairs: Iterable[tuple[str, str]], drop: str = "") -> str:
    """Sorted `name=value` pairs in SigV4 form; `drop` names a parameter left out (a presigned URL's signature)."""
    items = []
    for name, value in pairs:
        name = canonical_part(name)
        if name != drop:
            items.append((name, canonical_part(value)))
    items.sort()
    return "&".join([f"{name}={value}" for name, value in items])


def canonical_header_value(values: Iterable[str]) -> str:
    """A header's values as signed: each trimmed with inner runs of spaces folded, joined by commas."""
    return ",".join(" ".join(value.split()) for value in values)


def string_to_sign(amz_date: str, scope: str, canonical_request: str) -> str:
    return "\n".join((ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()))


def signature_matches(key: bytes, to_sign: str, signature: str) -> bool:
    return hmac.compare_digest(hmac_hex(key, to_sign), signature.lower())


def parse_amz_date(value: str) -> float | None:
    """`20240102T030405Z` -> epoch seconds; None when malformed."""
    if len(value) != 16 or value[8] != "T" or value[15] != "Z" or not (value[:8] + value[9:15]).isdigit():
        return None
    year, month, day = int(value[0:4]), int(value[4:6]), int(value[6:8])
    hour, minute, second = int(value[9:11]), int(value[11:13]), int(value[13:15])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        return None
    return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))
