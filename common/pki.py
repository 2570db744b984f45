"""The cloud's PKI: a CA, the `cloud` key pair, component and user certificates (DESIGN section 4).

A certificate names its holder in the subject: CN is the component or user id, OU its role (`clc`, `cc`,
`nc`, `walrus`, `admin`, `cloud` or `user`). Components get ECDSA P-256 keys by default: signing every
internal call with them is some twenty times cheaper than with RSA-2048 (see bench/rpc_bench.py). The cloud
key pair and user certificates are RSA, because bundled images encrypt and sign with RSA (bundles.md).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

COMPONENT_ROLES = frozenset({"clc", "cc", "nc", "walrus", "admin"})
ALL_ROLES = COMPONENT_ROLES | {"cloud", "user"}
CA_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
CLOUD_CERT_FILE = "cloud-cert.pem"
CLOUD_KEY_FILE = "cloud-pk.pem"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class PkiError(Exception):
    pass


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lowercase hex: the X-Koala-Cert value."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def role_of(cert: x509.Certificate) -> str | None:
    values = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return str(values[0].value) if values else None


def id_of(cert: x509.Certificate) -> str | None:
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else None


def new_key(kind: str = "ec") -> PrivateKey:
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise PkiError(f"unknown key type {kind!r} (ec or rsa)")


def _name(cn: str, ou: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Koala"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_ca(days: int = 3650) -> tuple[x509.Certificate, PrivateKey]:
    key = new_key("rsa")
    name = _name("Koala Cloud CA", "ca")
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    subject_id: str,
    role: str,
    key: PrivateKey | None = None,
    days: int = 3650,
    not_before: dt.datetime | None = None,
    addresses: Sequence[str] = (),
) -> tuple[x509.Certificate, PrivateKey]:
    """Issue a certificate for `subject_id` with `role`, signed by the CA. With `addresses` (host names or IP
    addresses) it is also a TLS certificate for those addresses, server and client (libvirt's and QEMU's TLS
    check the peer's name against them)."""
    if role not in ALL_ROLES:
        raise PkiError(f"unknown role {role!r}; one of {', '.join(sorted(ALL_ROLES))}")
    if not subject_id or len(subject_id) > 64:
        raise PkiError("subject id must be 1 to 64 characters")
    key = key or new_key("rsa" if role in {"cloud", "user"} else "ec")
    start = not_before or _now() - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject_id, role))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if addresses:
        names = x509.SubjectAlternativeName([_general_name(a) for a in addresses])
        builder = builder.add_extension(names, critical=False)
        builder = builder.add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH, x509.ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def _general_name(address: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(address))
    except ValueError:
        return x509.DNSName(address)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_cert(path: str | Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as err:
        raise PkiError(f"{path}: cannot load certificate ({err})") from None


def load_key(path: str | Path) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise PkiError(f"{path}: cannot load private key ({err})") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path}: unsupported key type")
    return key


def write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by its owner only, never briefly world-readable."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


@dataclass
class PkiDir:
    """A directory holding the CA and the certificates issued from it."""

    path: Path

    @property
    def ca_path(self) -> Path:
        return self.path / CA_FILE

    def cert_path(self, subject_id: str) -> Path:
        return self.path / f"{_safe(subject_id)}.pem"

    def key_path(self, subject_id: str) -> Path:
        return self.path / f"{_safe(subject_id)}-key.pem"

    def exists(self) -> bool:
        return self.ca_path.exists()

    def init(self) -> None:
        """Create the CA and the cloud key pair, once."""
        if self.exists():
            raise PkiError(f"{self.path} already holds a CA")
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        ca_cert, ca_key = make_ca()
        self.ca_path.write_bytes(cert_pem(ca_cert))
        write_private(self.path / CA_KEY_FILE, key_pem(ca_key))
        cloud_cert, cloud_key = issue(ca_cert, ca_key, "cloud", "cloud")
        (self.path / CLOUD_CERT_FILE).write_bytes(cert_pem(cloud_cert))
        write_private(self.path / CLOUD_KEY_FILE, key_pem(cloud_key))

    def ca(self) -> tuple[x509.Certificate, PrivateKey]:
        return load_cert(self.ca_path), load_key(self.path / CA_KEY_FILE)

    def issue(self, subject_id: str, role: str, key_type: str | None = None, addresses: Sequence[str] = ()) -> Path:
        ca_cert, ca_key = self.ca()
        key = new_key(key_type) if key_type else None
        cert, key = issue(ca_cert, ca_key, subject_id, role, key, addresses=addresses)
        self.cert_path(subject_id).write_bytes(cert_pem(cert))
        write_private(self.key_path(subject_id), key_pem(key))
        return self.cert_path(subject_id)

    def ensure(self, subject_id: str, role: str) -> None:
        if not self.cert_path(subject_id).exists():
            self.issue(subject_id, role)

    def ensure_many(self, subject_ids: Sequence[str], role: str) -> None:
        """`ensure` for many ids (a simulated fleet's nodes), loading the CA once rather than once per id."""
        missing = [i for i in subject_ids if not self.cert_path(i).exists()]
        if not missing:
            return
        ca_cert, ca_key = self.ca()
        for subject_id in missing:
            cert, key = issue(ca_cert, ca_key, subject_id, role)
            self.cert_path(subject_id).write_bytes(cert_pem(cert))
            write_private(self.key_path(subject_id), key_pem(key))


def _safe(subject_id: str) -> str:
    if not subject_id or not all(c.isalnum() or c in "-_." for c in subject_id) or subject_id[0] == ".":
        raise PkiError(f"invalid id {subject_id!r}: letters, digits, '-', '_' and '.' only")
    return subject_id


def describe(cert: x509.Certificate) -> dict[str, str]:
    return {
        "id": id_of(cert) or "",
        "role": role_of(cert) or "",
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "key": _key_kind(cert),
        "sha256": fingerprint(cert),
    }


def _key_kind(cert: x509.Certificate) -> str:
    public = cert.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        return f"ecdsa-{public.curve.name}"
    if isinstance(public, rsa.RSAPublicKey):
        return f"rsa-{public.key_size}"
    return "other"
