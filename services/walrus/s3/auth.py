"""S3 request authentication: SigV4 (header and query) and SigV2 (header and query), and the cloud's own
signed internal requests. Signatures are compared in constant time; the clock may be 15 minutes off."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from urllib.parse import quote, unquote

from common import signing as koala_signing
from common import sigv4
from services.walrus.s3.context import ChunkSigning, Ctx, Requester
from services.walrus.s3.errors import S3Error
from services.walrus.s3.identity import Credentials
from services.walrus.s3.routing import REMEMBERED_METHODS
from services.walrus.s3.xml import parse_http_time

MAX_SKEW = 15 * 60
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
STREAMING_MODES = frozenset(
    {
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
    }
)
CLOUD_ROLES = frozenset({"nc", "clc"})
# Query parameters that are part of SigV2's canonical resource.
V2_SUBRESOURCES = frozenset(
    """acl cors delete lifecycle location logging notification partNumber policy requestPayment restore
    tagging torrent uploadId uploads versionId versioning versions website replication response-content-type
    response-content-language response-expires response-cache-control response-content-disposition
    response-content-encoding""".split()
)
VERIFIED_ENTRIES = 4096
_verified: set[tuple[bytes | str, ...]] = set()  # SigV4 inputs whose signature checked out (see _verify_v4)


_PATH_SAFE = re.compile(r"[A-Za-z0-9_.~/-]*")


def aws_quote(value: str, safe: str = "") -> str:
    """RFC 3986 encoding as SigV4 wants it: everything but A-Z a-z 0-9 - _ . ~ (and `safe`)."""
    return quote(value, safe=safe + "~")


def _parse_amz_date(value: str) -> float:
    """`20240102T030405Z` -> epoch seconds (a presigned URL's date is parsed once)."""
    moment = _amz_dates.get(value)
    if moment is None:
        moment = sigv4.parse_amz_date(value)
        if moment is None:
            return _bad_date()
        if len(_amz_dates) >= 4096:
            _amz_dates.clear()
        _amz_dates[value] = moment
    return moment


_amz_dates: dict[str, float] = {}


def _iso(stamp: float) -> str:
    return dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _bad_date() -> float:
    raise S3Error("AccessDenied", "AWS authentication requires a valid Date or x-amz-date header")


def _check_skew(stamp: float) -> None:
    now = time.time()
    if abs(now - stamp) > MAX_SKEW:
        raise S3Error(
            "RequestTimeTooSkewed",
            RequestTime=dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y%m%dT%H%M%SZ"),
            ServerTime=dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            MaxAllowedSkewMilliseconds=MAX_SKEW * 1000,
        )


# Credentials (as the key resolver holds them, by identity) -> the Requester they make; both are immutable, so one
# Requester serves every request signed with the same resolved key
_requesters: dict[int, tuple[Credentials, Requester]] = {}


def _principal_requester(ctx: Ctx, creds: Credentials) -> Requester:
    found = _requesters.get(id(creds))
    if found is not None and found[0] is creds:  # held here, so its id is not reused meanwhile
        return found[1]
    if len(_requesters) >= 1024:
        _requesters.clear()
    requester = _new_requester(creds)
    _requesters[id(creds)] = (creds, requester)
    return requester


def _new_requester(creds: Credentials) -> Requester:
    principal = creds.principal
    return Requester(
        account_id=principal.account_id,
        account_name=principal.account_name,
        is_cloud=principal.is_admin,
        access_key=creds.access_key,
        user_name=principal.user_name,
        user_id=principal.user_id,
    )


async def authenticate(ctx: Ctx) -> None:
    """Set ctx.requester (anonymous when the request is not signed) or raise the S3 error."""
    headers = ctx.headers
    authorization = headers.get("Authorization", "")
    query = ctx.query
    if authorization.startswith("AWS4-HMAC-SHA256"):
        await _sigv4_header(ctx, authorization)
    elif authorization.startswith("AWS "):
        await _sigv2(ctx, authorization[4:], query_auth=False)
    elif authorization:
        raise S3Error("InvalidArgument", "Unsupported Authorization Type", ArgumentName="Authorization")
    elif "X-Amz-Algorithm" in query:
        await _sigv4_query(ctx)
    elif "AWSAccessKeyId" in query or "Signature" in query:
        await _sigv2(ctx, "", query_auth=True)
    elif headers.get(koala_signing.HEADER_SIGNATURE):
        _internal(ctx)
    else:
        payload = headers.get("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
        if payload == "STREAMING-AWS4-HMAC-SHA256-PAYLOAD":
            raise S3Error("AccessDenied", "signed chunks need a signed request")
        ctx.payload = payload


def _internal(ctx: Ctx) -> None:
    """A Koala component (NC or CLC) fetching with its certificate: the cloud itself."""
    app = ctx.app
    request = ctx.request
    if request.method not in ("GET", "HEAD"):
        raise S3Error("AccessDenied", "internal signatures are for reading")
    target = ctx.raw_path + (f"?{ctx.raw_query}" if ctx.raw_query else "")  # signed: path and query as sent
    try:
        peer = koala_signing.verify_request(
            app.trust, app.replay, app.service_id, request.method, target, request.headers, b""
        )
    except koala_signing.AuthError as err:
        raise S3Error("AccessDenied", f"internal signature refused: {err.message}") from None
    if peer.role not in CLOUD_ROLES:
        raise S3Error("AccessDenied", f"role {peer.role} may not read objects")
    ctx.requester = Requester(account_id="", account_name=peer.id, is_cloud=True)


# --- SigV4 -----------------------------------------------------------------------------------------------
def _canonical_uris(raw_path: str) -> list[str]:
    """The canonical URI as S3 clients compute it: the path, encoded once (not normalized)."""
    if _PATH_SAFE.fullmatch(raw_path):
        return [raw_path]
    encoded = aws_quote(unquote(raw_path), safe="/")
    return [encoded] if encoded == raw_path else [encoded, raw_path]


def _canonical_headers(ctx: Ctx, signed: list[str]) -> str:
    lines = []
    for name in signed:
        values = ctx.headers.getall(name, None)
        if values is None:
            raise S3Error("AccessDenied", f"signed header {name} is missing")
        lines.append(f"{name}:{sigv4.canonical_header_value(values)}\n")
    return "".join(lines)


def _parse_credential(credential: str) -> tuple[str, str, str, str, str]:
    parts = credential.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise S3Error("AuthorizationHeaderMalformed", "the Credential is malformed", status=400)
    if parts[3] != "s3":
        raise S3Error("AuthorizationHeaderMalformed", f"incorrect service {parts[3][:20]!r}, expected s3", status=400)
    return parts[0], parts[1], parts[2], parts[3], "/".join(parts[1:])


async def _verify_v4(
    ctx: Ctx,
    access_key: str,
    date: str,
    region: str,
    service: str,
    scope: str,
    amz_date: str,
    signed_headers: str,
    signature: str,
    payload: str,
    drop_query: str,
    stamp: float = 0.0,
) -> None:
    signed = [h for h in signed_headers.split(";") if h]
    if "host" not in signed:
        raise S3Error("AccessDenied", "the host header must be signed")
    if signed != sorted(signed) or any(h != h.lower() for h in signed):
        raise S3Error("AccessDenied", "SignedHeaders must be lowercase and sorted")
    if not amz_date.startswith(date):
        raise S3Error("AccessDenied", "the credential date does not match the request date")
    creds = await ctx.app.keys.resolve(access_key)
    key = sigv4.signing_key(creds.secret, date, region, service)
    raw_path, raw_query = ctx.raw_path, ctx.raw_query
    headers = _canonical_headers(ctx, signed)
    # Everything the signature covers, with the secret it was checked against: the same inputs verify the same
    # way, so a presigned URL fetched again (or a header-signed request retried) skips the canonical request.
    # Reads only (routing.REMEMBERED_METHODS): an upload's URL is most often new, and remembering it only filled
    # the memo.
    method = ctx.request.method
    seen = (key, method, raw_path, raw_query, headers, signed_headers, payload, amz_date, signature)
    remember = method in REMEMBERED_METHODS
    if not remember or seen not in _verified:
        query = sigv4.canonical_query(sigv4.raw_query_pairs(raw_query), drop=drop_query)
        first_string = first_request = ""
        for uri in _canonical_uris(raw_path):
            canonical = "\n".join((ctx.request.method, uri, query, headers, signed_headers, payload))
            string_to_sign = sigv4.string_to_sign(amz_date, scope, canonical)
            if sigv4.signature_matches(key, string_to_sign, signature):
                break
            first_string, first_request = first_string or string_to_sign, first_request or canonical
        else:
            raise S3Error(
                "SignatureDoesNotMatch",
                AWSAccessKeyId=access_key,
                StringToSign=first_string,
                SignatureProvided=signature,
                StringToSignBytes=" ".join(f"{b:02x}" for b in first_string.encode()),
                CanonicalRequest=first_request,
            )
        if remember:
            if len(_verified) >= VERIFIED_ENTRIES:
                _verified.clear()
            _verified.add(seen)
    ctx.requester = _principal_requester(ctx, creds)
    ctx.signing = ChunkSigning(key, scope, amz_date, signature.lower())
    ctx.auth_type = "REST-QUERY-STRING" if drop_query else "REST-HEADER"
    ctx.signature_version, ctx.signed_at = "AWS4-HMAC-SHA256", stamp


async def _sigv4_header(ctx: Ctx, authorization: str) -> None:
    fields: dict[str, str] = {}
    for part in authorization[len("AWS4-HMAC-SHA256") :].split(","):
        name, _, value = part.strip().partition("=")
        fields[name] = value
    try:
        credential, signed_headers, signature = fields["Credential"], fields["SignedHeaders"], fields["Signature"]
    except KeyError:
        raise S3Error("AuthorizationHeaderMalformed", "the authorization header is malformed", status=400) from None
    access_key, date, region, service, scope = _parse_credential(credential)
    amz_date = ctx.headers.get("x-amz-date", "")
    if amz_date:
        stamp = _parse_amz_date(amz_date)
    else:
        parsed = parse_http_time(ctx.headers.get("Date", ""))
        if parsed is None:
            raise S3Error("AccessDenied", "AWS authentication requires a valid Date or x-amz-date header")
        stamp = parsed
        amz_date = dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    _check_skew(stamp)
    payload = ctx.headers.get("x-amz-content-sha256")
    if payload is None:
        raise S3Error("InvalidRequest", "Missing required header for this request: x-amz-content-sha256")
    if payload not in STREAMING_MODES and payload != "UNSIGNED-PAYLOAD":
        if len(payload) != 64 or any(c not in "0123456789abcdef" for c in payload.lower()):
            raise S3Error(
                "InvalidArgument",
                "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, a streaming mode, or a SHA-256 hex digest",
                ArgumentName="x-amz-content-sha256",
            )
    ctx.payload = payload
    await _verify_v4(
        ctx, access_key, date, region, service, scope, amz_date, signed_headers, signature, payload, "", stamp
    )


@dataclass(frozen=True)
class _Presigned:
    """A presigned URL that checked out, and what its check set on the request."""

    access_key: str
    creds: Credentials  # as resolved then: the same secret must still be the key's
    requester: Requester
    signing: ChunkSigning
    stamp: float
    expires: int


_presigned: dict[tuple[str, ...], _Presigned] = {}  # (method, path, query, host, payload header) -> its check; GET/HEAD


async def _presigned_again(ctx: Ctx, memo_key: tuple[str, ...]) -> bool:
    """A presigned URL fetched again (the usual way to serve one object to many): True when its earlier check
    still holds: not expired, its key still enabled with the same secret. False leaves it to the full check, which
    also words every refusal."""
    seen = _presigned.get(memo_key)
    if seen is None:
        return False
    now = time.time()
    if now > seen.stamp + seen.expires or seen.stamp - now > MAX_SKEW:
        return False
    creds = await ctx.app.keys.resolve(seen.access_key)  # revocation and key changes as for any request
    if creds is not seen.creds:
        if creds.secret != seen.creds.secret:
            return False
        seen = dataclasses.replace(seen, creds=creds, requester=_principal_requester(ctx, creds))
        _presigned[memo_key] = seen
    ctx.payload = ctx.headers.get("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
    ctx.requester, ctx.signing = seen.requester, seen.signing
    ctx.auth_type, ctx.signature_version, ctx.signed_at = "REST-QUERY-STRING", "AWS4-HMAC-SHA256", seen.stamp
    return True


async def _sigv4_query(ctx: Ctx) -> None:
    headers = ctx.headers
    memo_key = (
        ctx.request.method,
        ctx.raw_path,
        ctx.raw_query,
        headers.get("Host", ""),
        headers.get("x-amz-content-sha256", ""),
    )
    reused = ctx.request.method in REMEMBERED_METHODS
    if reused and await _presigned_again(ctx, memo_key):
        return
    query = ctx.query
    if query.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
        raise S3Error(
            "InvalidArgument", "X-Amz-Algorithm only supports AWS4-HMAC-SHA256", ArgumentName="X-Amz-Algorithm"
        )
    try:
        credential = query["X-Amz-Credential"]
        amz_date = query["X-Amz-Date"]
        signed_headers = query["X-Amz-SignedHeaders"]
        signature = query["X-Amz-Signature"]
        expires = int(query.get("X-Amz-Expires", "604800"))
    except (KeyError, ValueError):
        raise S3Error("AuthorizationQueryParametersError", "the presigned URL is incomplete", status=400) from None
    if expires < 0:
        raise S3Error("AuthorizationQueryParametersError", "X-Amz-Expires must be non-negative", status=400)
    if expires > MAX_PRESIGN_SECONDS:
        raise S3Error(
            "AuthorizationQueryParametersError",
            "X-Amz-Expires must be less than a week (in seconds) that is 604800",
            status=400,
        )
    access_key, date, region, service, scope = _parse_credential(credential)
    stamp = _parse_amz_date(amz_date)
    now = time.time()
    if stamp - now > MAX_SKEW:
        raise S3Error("RequestTimeTooSkewed")
    if now > stamp + expires:
        raise S3Error(
            "AccessDenied",
            "Request has expired",
            XAmzExpires=expires,
            Expires=_iso(stamp + expires),
            ServerTime=_iso(now),
        )
    payload = ctx.headers.get("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
    ctx.payload = payload
    await _verify_v4(
        ctx,
        access_key,
        date,
        region,
        service,
        scope,
        amz_date,
        signed_headers,
        signature,
        "UNSIGNED-PAYLOAD" if "x-amz-content-sha256" not in signed_headers.split(";") else payload,
        "X-Amz-Signature",
        stamp,
    )
    if reused and signed_headers == "host" and ctx.signing is not None:  # the key names all the check covered
        if len(_presigned) >= VERIFIED_ENTRIES:
            _presigned.clear()
        creds = await ctx.app.keys.resolve(access_key)
        _presigned[memo_key] = _Presigned(access_key, creds, ctx.requester, ctx.signing, stamp, expires)


def chunk_signature(signing: ChunkSigning, previous: str, chunk_sha256: str) -> str:
    string_to_sign = "\n".join(
        (
            "AWS4-HMAC-SHA256-PAYLOAD",
            signing.amz_date,
            signing.scope,
            previous,
            hashlib.sha256(b"").hexdigest(),
            chunk_sha256,
        )
    )
    return sigv4.hmac_hex(signing.key, string_to_sign)


def trailer_signature(signing: ChunkSigning, previous: str, trailer_text: str) -> str:
    string_to_sign = "\n".join(
        (
            "AWS4-HMAC-SHA256-TRAILER",
            signing.amz_date,
            signing.scope,
            previous,
            hashlib.sha256(trailer_text.encode()).hexdigest(),
        )
    )
    return sigv4.hmac_hex(signing.key, string_to_sign)


# --- SigV2 -----------------------------------------------------------------------------------------------
def _v2_resources(ctx: Ctx, raw_path: str, raw_query: str) -> list[str]:
    subresources = []
    for name, value in sorted(sigv4.raw_query_pairs(raw_query)):
        name = unquote(name)
        if name in V2_SUBRESOURCES:
            value = unquote(value)
            subresources.append(f"{name}={value}" if value or "=" in raw_query else name)
    suffix = ("?" + "&".join(subresources)) if subresources else ""
    candidates = []
    if ctx.bucket:
        key_part = "/" + ctx.key if ctx.key else "/"
        candidates.append(f"/{ctx.bucket}{aws_quote(key_part, safe='/')}")
        candidates.append(f"/{ctx.bucket}{key_part}")
        if not ctx.key:
            candidates.append(f"/{ctx.bucket}")
    candidates += [raw_path, unquote(raw_path)]
    seen: list[str] = []
    for candidate in candidates:
        if candidate + suffix not in seen:
            seen.append(candidate + suffix)
    return seen


async def _sigv2(ctx: Ctx, credential: str, query_auth: bool) -> None:
    headers = ctx.headers
    if query_auth:
        access_key = ctx.query.get("AWSAccessKeyId", "")
        signature = ctx.query.get("Signature", "")
        expires = ctx.query.get("Expires", "")
        try:
            expires_at = int(expires)
        except ValueError:
            raise S3Error("AccessDenied", "Query-string authentication requires Expires") from None
        now = time.time()
        if now > expires_at:
            raise S3Error("AccessDenied", "Request has expired", Expires=_iso(expires_at), ServerTime=_iso(now))
        date_lines = [expires]
        signed_at = now
    else:
        access_key, _, signature = credential.rpartition(":")
        if not access_key:
            raise S3Error("InvalidArgument", "AWS authorization header is invalid", ArgumentName="Authorization")
        amz_date = headers.get("x-amz-date")
        stamp = parse_http_time(amz_date or headers.get("Date") or "")
        if stamp is None:
            raise S3Error("AccessDenied", "AWS authentication requires a valid Date or x-amz-date header")
        _check_skew(stamp)
        date_lines = ["", headers.get("Date", "")] if amz_date else [headers.get("Date", "")]
        signed_at = stamp
    creds = await ctx.app.keys.resolve(access_key)
    amz: dict[str, list[str]] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith("x-amz-"):
            amz.setdefault(lower, []).append(" ".join(value.split()))
    amz_lines = "".join(f"{name}:{','.join(values)}\n" for name, values in sorted(amz.items()))
    raw_path, raw_query = ctx.raw_path, ctx.raw_query
    try:
        provided = base64.b64decode(signature, validate=True)
    except ValueError:
        provided = b""
    first = ""
    for date_line in dict.fromkeys(date_lines):
        for resource in _v2_resources(ctx, raw_path, raw_query):
            string_to_sign = "\n".join(
                (
                    ctx.request.method,
                    headers.get("Content-MD5", ""),
                    headers.get("Content-Type", ""),
                    date_line,
                    amz_lines + resource,
                )
            )
            first = first or string_to_sign
            expected = hmac.new(creds.secret.encode(), string_to_sign.encode(), hashlib.sha1).digest()
            if hmac.compare_digest(expected, provided):
                ctx.requester = _principal_requester(ctx, creds)
                ctx.payload = "UNSIGNED-PAYLOAD"
                ctx.auth_type = "REST-QUERY-STRING" if query_auth else "REST-HEADER"
                ctx.signature_version, ctx.signed_at = "AWS", signed_at
                return
    raise S3Error(
        "SignatureDoesNotMatch",
        AWSAccessKeyId=access_key,
        StringToSign=first,
        SignatureProvided=signature,
        StringToSignBytes=" ".join(f"{b:02x}" for b in first.encode()),
    )
