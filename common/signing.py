"""WS-Security-style signatures for internal calls (DESIGN section 3).

The canonical string binds method, path, recipient, date, nonce and the body's SHA-256, so a signed request
cannot be altered, replayed, or sent to another service. Responses are signed over the same fields with the
request's nonce, which binds each response to its request.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from common import pki

HEADER_CERT = "X-Koala-Cert"
HEADER_CERT_PEM = "X-Koala-Cert-Pem"
HEADER_DATE = "X-Koala-Date"
HEADER_NONCE = "X-Koala-Nonce"
HEADER_SIGNATURE = "X-Koala-Signature"
CLOCK_WINDOW_SECONDS = 300
RESPONSE_METHOD = "RESPONSE"
PREDATES_START = "SignedBeforeStart"  # the refusal of a request signed before the receiving process started


class AuthError(Exception):
    """A refused signature check; `code` is the reason given to the caller and logged."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def canonical(method: str, path: str, recipient: str, date: str, nonce: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join((method, path, recipient, date, nonce, digest)).encode()


def format_date(moment: float | None = None) -> str:
    stamp = dt.datetime.fromtimestamp(time.time() if moment is None else moment, dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_date(value: str) -> float:
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise AuthError(401, "BadDate", f"{HEADER_DATE} is not an RFC 3339 time") from None


def new_nonce() -> str:
    return secrets.token_hex(16)


def sign_bytes(key: pki.PrivateKey, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    return key.sign(data, _pss(), hashes.SHA256())


def verify_bytes(cert: x509.Certificate, signature: bytes, data: bytes) -> bool:
    public = cert.public_key()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, data, _pss(), hashes.SHA256())
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


@dataclass(frozen=True)
class Identity:
    """This component: its id, role, certificate and private key."""

    id: str
    role: str
    cert: x509.Certificate
    key: pki.PrivateKey
    fingerprint: str
    cert_der_b64: str

    @classmethod
    def from_files(cls, cert_path: str | Path, key_path: str | Path) -> Identity:
        cert = pki.load_cert(cert_path)
        key = pki.load_key(key_path)
        der = cert.public_bytes(serialization.Encoding.DER)
        return cls(
            id=pki.id_of(cert) or "",
            role=pki.role_of(cert) or "",
            cert=cert,
            key=key,
            fingerprint=pki.fingerprint(cert),
            cert_der_b64=base64.b64encode(der).decode(),
        )

    def sign_headers(
        self, method: str, path: str, recipient: str, body: bytes, nonce: str | None = None, at: float | None = None
    ) -> dict[str, str]:
        date = format_date(at)
        nonce = nonce or new_nonce()
        signature = sign_bytes(self.key, canonical(method, path, recipient, date, nonce, body))
        return {
            HEADER_CERT: self.fingerprint,
            HEADER_DATE: date,
            HEADER_NONCE: nonce,
            HEADER_SIGNATURE: base64.b64encode(signature).decode(),
        }


@dataclass(frozen=True)
class PeerCert:
    cert: x509.Certificate
    id: str
    role: str
    fingerprint: str


class TrustStore:
    """The cloud CA and the certificates already checked against it, by fingerprint."""

    def __init__(self, ca: x509.Certificate):
        self.ca = ca
        self._known: dict[str, PeerCert] = {}

    def add(self, cert: x509.Certificate) -> PeerCert:
        """Check that `cert` was issued by the cloud CA and is in its validity period, then remember it."""
        try:
            cert.verify_directly_issued_by(self.ca)
        except (ValueError, TypeError, InvalidSignature):
            raise AuthError(403, "UntrustedCertificate", "certificate not issued by the cloud CA") from None
        self._check_validity(cert)
        peer = PeerCert(cert, pki.id_of(cert) or "", pki.role_of(cert) or "", pki.fingerprint(cert))
        if len(self._known) > 10_000:  # bounded: certificates come from callers
            self._known.clear()
        self._known[peer.fingerprint] = peer
        return peer

    def add_der_b64(self, value: str) -> PeerCert:
        try:
            if len(value) > 16_384:
                raise ValueError("too long")
            cert = x509.load_der_x509_certificate(base64.b64decode(value, validate=True))
        except ValueError:
            raise AuthError(400, "MalformedCertificate", f"{HEADER_CERT_PEM} is not a DER certificate") from None
        return self.add(cert)

    def get(self, fp: str) -> PeerCert | None:
        peer = self._known.get(fp)
        if peer is not None:
            self._check_validity(peer.cert)
        return peer

    @staticmethod
    def _check_validity(cert: x509.Certificate) -> None:
        now = dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise AuthError(403, "ExpiredCertificate", "certificate is expired or not yet valid")


class ReplayCache:
    """Nonces seen inside the clock window, bounded in memory (oldest forgotten first).

    The nonces do not outlive the process, so a request signed before it started is refused outright
    (`not_before`): a replay of a request captured before a restart is caught without writing every nonce to disk
    on the request path. A genuine request is signed after the restart, since each attempt is signed afresh; a
    caller whose clock runs behind this one's re-signs at the date of the refusal (see RpcClient).
    """

    def __init__(self, window: float = CLOCK_WINDOW_SECONDS, capacity: int = 200_000, not_before: float | None = None):
        self.window, self.capacity = window, capacity
        self.not_before = time.time() if not_before is None else not_before
        self._seen: OrderedDict[str, float] = OrderedDict()

    def check_and_add(self, nonce: str, now: float | None = None) -> bool:
        """True if the nonce is fresh (and now remembered), False if it is a replay."""
        now = time.time() if now is None else now
        while self._seen:
            seen_at = next(iter(self._seen.values()))
            if seen_at >= now - 2 * self.window and len(self._seen) < self.capacity:
                break
            self._seen.popitem(last=False)
        if nonce in self._seen:
            return False
        self._seen[nonce] = now
        return True

    def __len__(self) -> int:
        return len(self._seen)


def verify_request(
    trust: TrustStore,
    replay: ReplayCache,
    recipient: str,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
) -> PeerCert:
    """Check a signed request; return the caller's certificate or raise AuthError with the reason."""
    get = headers.get
    fp, date, nonce, signature = (get(h) for h in (HEADER_CERT, HEADER_DATE, HEADER_NONCE, HEADER_SIGNATURE))
    if not (fp and date and nonce and signature):
        raise AuthError(401, "MissingSignature", "request is not signed")
    pem = get(HEADER_CERT_PEM)
    peer = trust.add_der_b64(pem) if pem else trust.get(fp)
    if peer is None:
        raise AuthError(401, "UnknownCertificate", "certificate not known here; send it in " + HEADER_CERT_PEM)
    if peer.fingerprint != fp:
        raise AuthError(401, "CertificateMismatch", f"{HEADER_CERT} does not match the certificate sent")
    signed_at = parse_date(date)
    skew = abs(time.time() - signed_at)
    if skew > CLOCK_WINDOW_SECONDS:
        raise AuthError(401, "RequestExpired", f"date is {skew:.0f} s away from this service's clock")
    if len(nonce) != 32 or not all(c in "0123456789abcdef" for c in nonce):
        raise AuthError(401, "BadNonce", "nonce must be 128 bits in lowercase hex")
    try:
        raw_signature = base64.b64decode(signature, validate=True)
    except ValueError:
        raise AuthError(401, "BadSignature", "signature is not base64") from None
    if not verify_bytes(peer.cert, raw_signature, canonical(method, path, recipient, date, nonce, body)):
        raise AuthError(401, "BadSignature", "signature does not match (altered request or another recipient)")
    if signed_at < replay.not_before:
        raise AuthError(401, PREDATES_START, "signed before this service started: perhaps a replay; sign again")
    if not replay.check_and_add(nonce):
        raise AuthError(401, "ReplayedNonce", "nonce already seen: replayed request")
    return peer


def verify_response(
    peer: PeerCert, client_fingerprint: str, path: str, request_nonce: str, headers: object, body: bytes
) -> None:
    get = headers.get  # type: ignore[attr-defined]
    fp, date, signature = get(HEADER_CERT), get(HEADER_DATE), get(HEADER_SIGNATURE)
    if not (fp and date and signature):
        raise AuthError(502, "UnsignedResponse", "the peer's response is not signed")
    if fp != peer.fingerprint:
        raise AuthError(502, "ResponseCertificateMismatch", "response signed by another certificate")
    try:
        raw = base64.b64decode(signature, validate=True)
    except ValueError:
        raise AuthError(502, "BadResponseSignature", "response signature is not base64") from None
    data = canonical(RESPONSE_METHOD, path, client_fingerprint, date, request_nonce, body)
    if not verify_bytes(peer.cert, raw, data):
        raise AuthError(502, "BadResponseSignature", "response signature does not match")
    if abs(time.time() - parse_date(date)) > CLOCK_WINDOW_SECONDS:
        raise AuthError(502, "ResponseExpired", "response date outside the clock window")
