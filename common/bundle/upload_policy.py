"""BundleInstance's upload policy (EC2's Storage.S3.*): an S3 browser-POST policy the user signed with the secret of
`AWSAccessKeyId` (HMAC-SHA1, base64), and the POST uploads made with it.

The CLC checks the policy before accepting the task (so a bad one is EC2's error at once, not a failed task
later); Walrus checks it again on every upload, as for any browser POST. The node uploads the parts and the CLC
the manifest with the same form fields, so neither ever holds the user's secret.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any

import aiohttp

MAX_POLICY_BYTES = 16 * 1024  # base64 text; S3 reads 20 KiB of form fields in all
MAX_CONDITIONS = 100
PLAIN_NAME = re.compile(r"[A-Za-z0-9._+@=,-][A-Za-z0-9._+@=,~-]{0,127}")  # a prefix becomes object key names


class PolicyError(Exception):
    """The policy or its signature does not allow this upload; `message` says why (EC2 answers it as is)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class UploadPolicy:
    bucket: str
    prefix: str
    access_key_id: str
    policy: str  # base64 JSON, as the user sent it
    signature: str  # base64 HMAC-SHA1 of `policy`
    acl: str = ""  # the canned ACL the policy demands, sent as the form's acl field

    def fields(self, key: str) -> dict[str, str]:
        """The form fields of one upload (the file follows them)."""
        fields = {"key": key, "AWSAccessKeyId": self.access_key_id, "policy": self.policy, "signature": self.signature}
        if self.acl:
            fields["acl"] = self.acl
        return fields


def signature(secret: str, policy_b64: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), policy_b64.encode(), hashlib.sha1).digest()).decode()


def check(storage: dict[str, Any], now: float) -> UploadPolicy:
    """The policy of a BundleInstance Storage.S3 parameter, checked for form (not yet for its signature): it
    expires later than `now`, names the bucket, and lets keys start with the prefix."""
    bucket, prefix = str(storage.get("Bucket") or ""), str(storage.get("Prefix") or "")
    access_key, policy_b64 = str(storage.get("AWSAccessKeyId") or ""), storage.get("UploadPolicy") or b""
    sig = str(storage.get("UploadPolicySignature") or "")
    for name, value in (("Bucket", bucket), ("Prefix", prefix), ("AWSAccessKeyId", access_key)):
        if not value:
            raise PolicyError(f"Storage.S3.{name} is required")
    if not sig:
        raise PolicyError("Storage.S3.UploadPolicySignature is required")
    if not PLAIN_NAME.fullmatch(prefix) or prefix in {".", ".."}:
        raise PolicyError(f"Storage.S3.Prefix {prefix[:80]!r} must be 1-128 letters, digits or ._+@=,~-")
    # botocore's model types UploadPolicy as a blob: the frontend hands its base64 text decoded.
    raw = policy_b64 if isinstance(policy_b64, bytes) else str(policy_b64).encode()
    if len(raw) > MAX_POLICY_BYTES or len(sig) > 128:
        raise PolicyError("Storage.S3.UploadPolicy is too large")
    text = base64.b64encode(raw).decode()
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise PolicyError("Storage.S3.UploadPolicy is not base64 of a JSON policy document") from None
    if not isinstance(document, dict) or not isinstance(document.get("conditions"), list):
        raise PolicyError("Storage.S3.UploadPolicy has no conditions list")
    if _expiration(document.get("expiration")) <= now:
        raise PolicyError("Storage.S3.UploadPolicy has expired")
    conditions = document["conditions"]
    if len(conditions) > MAX_CONDITIONS:
        raise PolicyError("Storage.S3.UploadPolicy has too many conditions")
    named_bucket, key_ok, acl = None, False, ""
    for condition in conditions:
        field, op, value = _condition(condition)
        if field == "bucket" and op == "eq":
            named_bucket = value
        elif field == "key":
            key_ok = key_ok or (prefix.startswith(value) if op == "starts-with" else False)
        elif field == "acl" and op == "eq":
            acl = value
    if named_bucket != bucket:
        raise PolicyError(f"Storage.S3.UploadPolicy does not name the bucket {bucket}")
    if not key_ok:
        raise PolicyError(f'Storage.S3.UploadPolicy has no ["starts-with", "$key", ...] condition for {prefix}')
    return UploadPolicy(bucket, prefix, access_key, text, sig, acl)


def _condition(condition: object) -> tuple[str, str, str]:
    if isinstance(condition, dict) and len(condition) == 1:
        ((field, value),) = condition.items()
        return str(field).lower(), "eq", str(value)
    if isinstance(condition, list) and len(condition) == 3 and isinstance(condition[1], str):
        op, field, value = str(condition[0]).lower(), condition[1].lstrip("$").lower(), str(condition[2])
        return field, op, value
    return "", "", ""


def _expiration(value: object) -> float:
    if not isinstance(value, str):
        raise PolicyError("Storage.S3.UploadPolicy has no expiration")
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise PolicyError("Storage.S3.UploadPolicy's expiration is not an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def signature_matches(policy: UploadPolicy, secret: str) -> bool:
    try:
        given = base64.b64decode(policy.signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(given, base64.b64decode(signature(secret, policy.policy)))


class UploadFailed(Exception):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status


async def post_object(
    session: aiohttp.ClientSession, s3_url: str, policy: UploadPolicy, key: str, data: bytes, timeout: float = 300.0
) -> None:
    """One browser-POST upload of `data` as `key` in the policy's bucket (Walrus checks policy and signature)."""
    form = aiohttp.FormData()
    for name, value in policy.fields(key).items():
        form.add_field(name, value)
    form.add_field("file", data, filename=key, content_type="application/octet-stream")
    url = f"{s3_url.rstrip('/')}/{policy.bucket}"
    async with session.post(url, data=form, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
        if response.status >= 300:
            raise UploadFailed(response.status, await response.text())
