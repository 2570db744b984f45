"""EC2 request authentication: SigV4 (header or query) and SigV2 (HmacSHA1, HmacSHA256).

`authenticate()` finds the scheme, looks the access key up through a callback (the identity store), checks the
time (RequestExpired outside the window or after Expires) and compares signatures in constant time.
Secrets never leave this module in errors or logs.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from common import sigv4
from services.cloud_controller.ec2.errors import Ec2Error, auth_failure

CLOCK_SKEW_SECONDS = 900  # EC2 accepts requests within 15 minutes of its clock
MAX_PRESIGN_SECONDS = 7 * 24 * 3600

SIGV4_SERVICES = frozenset({"ec2"})
SIGV2_METHODS = {"HmacSHA256": hashlib.sha256, "HmacSHA1": hashlib.sha1}


@dataclass(frozen=True)
class Credential:
    """What the identity store returns for an access key id."""

    secret: str
    principal: Any  # common.messages.identity.Principal
    enabled: bool = True


Lookup = Callable[[str], Awaitable[Credential | None]]


@dataclass(frozen=True)
class SignedRequest:
    method: str
    host: str
    path: str  # decoded path
    raw_query: str  # the query string as sent
    headers: Any  # case-insensitive multi-dict (aiohttp's CIMultiDictProxy)
    body: bytes
    params: dict[str, str]  # query and form parameters, decoded


def signature_mismatch() -> Ec2Error:
    return Ec2Error(
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided. "
        "Check your AWS Secret Access Key and signing method.",
        403,
    )


def expired(message: str = "Request has expired.") -> Ec2Error:
    return Ec2Error("RequestExpired", message, 400)


async def authenticate(request: SignedRequest, lookup: Lookup, now: float | None = None) -> tuple[str, Any]:
    """(access key id, principal) of a correctly signed request, or raise Ec2Error."""
    now = time.time() if now is None else now
    header = request.headers.get("Authorization", "")
    if header.startswith(sigv4.ALGORITHM + " "):
        return await _sigv4(request, lookup, now, _parse_authorization(header[len(sigv4.ALGORITHM) + 1 :]), False)
    if request.params.get("X-Amz-Algorithm"):
        if request.params["X-Amz-Algorithm"] != sigv4.ALGORITHM:
            raise auth_failure(f"Unsupported X-Amz-Algorithm {request.params['X-Amz-Algorithm'][:40]!r}")
        fields = {
            "Credential": request.params.get("X-Amz-Credential", ""),
            "SignedHeaders": request.params.get("X-Amz-SignedHeaders", ""),
            "Signature": request.params.get("X-Amz-Signature", ""),
        }
        return await _sigv4(request, lookup, now, fields, True)
    if "Signature" in request.params or "AWSAccessKeyId" in request.params:
        return await _sigv2(request, lookup, now)
    raise auth_failure("The request is not signed: a SigV2 or SigV4 signature is required.")


# --- SigV4 ----------------------------------------------------------------------------------------------
def _parse_authorization(rest: str) -> dict[str, str]:
    fields = {}
    for part in rest.split(","):
        key, _, value = part.strip().partition("=")
        fields[key] = value
    return fields


def _amz_date(request: SignedRequest, query: bool) -> str:
    if query:
        return request.params.get("X-Amz-Date", "")
    value = request.headers.get("X-Amz-Date")
    if value:
        return str(value)
    date = request.headers.get("Date")
    if date:
        try:
            return email.utils.parsedate_to_datetime(date).astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        except (TypeError, ValueError):
            pass
    return ""


def _parse_amz_date(value: str) -> float:
    moment = sigv4.parse_amz_date(value)
    if moment is None:
        raise auth_failure("X-Amz-Date is missing or malformed (expected YYYYMMDDTHHMMSSZ)")
    return moment


async def _sigv4(
    request: SignedRequest, lookup: Lookup, now: float, fields: dict[str, str], query: bool
) -> tuple[str, Any]:
    credential, signed_headers, signature = (
        fields.get("Credential", ""),
        fields.get("SignedHeaders", ""),
        fields.get("Signature", ""),
    )
    scope_parts = credential.split("/")
    if len(scope_parts) != 5 or scope_parts[4] != "aws4_request" or not signed_headers or not signature:
        raise auth_failure("Malformed SigV4 credential or signature")
    access_key, date, region, service, _ = scope_parts
    if service not in SIGV4_SERVICES:
        raise auth_failure(f"Credential should be scoped to service 'ec2', not {service[:32]!r}")
    amz_date = _amz_date(request, query)
    moment = _parse_amz_date(amz_date)
    if amz_date[:8] != date:
        raise auth_failure("Credential date does not match X-Amz-Date")
    if query:
        try:
            lifetime = int(request.params.get("X-Amz-Expires", "300"))
        except ValueError:
            raise auth_failure("X-Amz-Expires must be an integer") from None
        if not 0 < lifetime <= MAX_PRESIGN_SECONDS:
            raise auth_failure("X-Amz-Expires must be between 1 and 604800 seconds")
        if now > moment + lifetime:
            raise expired("Request has expired.")
        if moment > now + CLOCK_SKEW_SECONDS:
            raise expired("Request is not yet valid (X-Amz-Date is in the future).")
    elif abs(now - moment) > CLOCK_SKEW_SECONDS:
        raise expired("Request has expired: its time is more than 15 minutes from the server's.")
    found = await _credential(lookup, access_key)
    headers = signed_headers.lower().split(";")
    if "host" not in headers:
        raise auth_failure("The host header must be signed")
    canonical_headers = "".join(f"{name}:{_header_value(request, name)}\n" for name in headers)
    payload_hash = hashlib.sha256(request.body).hexdigest()
    # A form-encoded query may carry '+' for a space; SigV4 signs it as %20.
    pairs = [(n.replace("+", "%20"), v.replace("+", "%20")) for n, v in sigv4.raw_query_pairs(request.raw_query)]
    canonical_request = "\n".join(
        (
            request.method,
            quote(request.path or "/", safe="/~"),
            sigv4.canonical_query(pairs, drop="X-Amz-Signature" if query else ""),
            canonical_headers,
            signed_headers.lower(),
            payload_hash,
        )
    )
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = sigv4.string_to_sign(amz_date, scope, canonical_request)
    if not sigv4.signature_matches(sigv4.signing_key(found.secret, date, region, service), to_sign, signature):
        raise signature_mismatch()
    return access_key, found.principal


def _header_value(request: SignedRequest, name: str) -> str:
    values = request.headers.getall(name, [])
    if not values:
        if name == "host":
            return request.host
        raise auth_failure(f"Signed header {name[:40]!r} is missing from the request")
    return sigv4.canonical_header_value(values)


# --- SigV2 ----------------------------------------------------------------------------------------------
def _parse_timestamp(value: str, name: str) -> float:
    try:
        stamp = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise Ec2Error("InvalidParameterValue", f"{name} must be an ISO 8601 time, e.g. 2013-02-01T12:00:00Z") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


async def _sigv2(request: SignedRequest, lookup: Lookup, now: float) -> tuple[str, Any]:
    params = request.params
    version = params.get("SignatureVersion", "")
    if version != "2":
        raise auth_failure(f"SignatureVersion {version[:8]!r} is not supported; use 2 or SigV4")
    method = params.get("SignatureMethod", "")
    digest = SIGV2_METHODS.get(method)
    if digest is None:
        raise auth_failure(f"SignatureMethod must be HmacSHA256 or HmacSHA1, not {method[:32]!r}")
    access_key, signature = params.get("AWSAccessKeyId", ""), params.get("Signature", "")
    if not access_key or not signature:
        raise auth_failure("AWSAccessKeyId and Signature are required")
    if "Timestamp" in params and "Expires" in params:
        raise Ec2Error("InvalidParameterCombination", "Timestamp and Expires must not both be given")
    if "Expires" in params:
        if now > _parse_timestamp(params["Expires"], "Expires"):
            raise expired("Request has expired (after its Expires time).")
    elif "Timestamp" in params:
        if abs(now - _parse_timestamp(params["Timestamp"], "Timestamp")) > CLOCK_SKEW_SECONDS:
            raise expired("Request has expired: its Timestamp is more than 15 minutes from the server's.")
    else:
        raise Ec2Error("MissingParameter", "The request must contain the parameter Timestamp or Expires")
    found = await _credential(lookup, access_key)
    query = "&".join(
        f"{quote(key, safe='-_.~')}={quote(value, safe='-_.~')}"
        for key, value in sorted(params.items())
        if key != "Signature"
    )
    given = signature.strip().encode()
    for host in _host_variants(request.host):
        for path in _sigv2_paths(request.path):
            string_to_sign = f"{request.method}\n{host}\n{path}\n{query}"
            expected = base64.b64encode(hmac.new(found.secret.encode(), string_to_sign.encode(), digest).digest())
            if hmac.compare_digest(expected, given):
                return access_key, found.principal
    raise signature_mismatch()


def _sigv2_paths(path: str) -> list[str]:
    """The path as sent, then without its one trailing slash: ec2-api-tools 1.6.7.1 send `POST /services/X/` but
    sign `/services/X`. Nothing looser (no other normalisation) is accepted."""
    path = path or "/"
    if len(path) > 1 and path.endswith("/"):
        return [path, path[:-1]]
    return [path]


def _host_variants(host: str) -> list[str]:
    """Clients differ on whether the port is part of the signed host; try the Host header as sent first."""
    host = host.lower()
    variants = [host]
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        variants.append(name)
    return variants


async def _credential(lookup: Lookup, access_key: str) -> Credential:
    if len(access_key) > 128:
        raise auth_failure()
    found = await lookup(access_key)
    if found is None or not found.enabled:
        raise auth_failure()
    return found
