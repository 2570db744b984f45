"""The bundle's AES key and IV, wrapped for the cloud and the user with RSA PKCS#1 v1.5.

The RSA plaintext is the 32-character lowercase hex string of the 16 bytes, not the raw bytes (bundles.md).
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from common.bundle.errors import BundleError

_KEY_HEX = re.compile(rb"[0-9a-f]{32}")


def new_key_iv() -> tuple[bytes, bytes]:
    return secrets.token_bytes(16), secrets.token_bytes(16)


def wrap(secret: bytes, cert: x509.Certificate) -> str:
    public = cert.public_key()
    if not isinstance(public, rsa.RSAPublicKey):
        raise BundleError("BadCertificate", "bundle certificates must hold RSA keys")
    return public.encrypt(secret.hex().encode(), padding.PKCS1v15()).hex()


def unwrap(wrapped_hex: str, key: rsa.RSAPrivateKey, what: str) -> bytes:
    """Decrypt a wrapped key or IV; a wrong private key gives CannotDecryptKey, never garbage."""
    try:
        plain = key.decrypt(bytes.fromhex(wrapped_hex), padding.PKCS1v15())
    except ValueError:
        plain = b""
    # OpenSSL's implicit rejection may return random bytes for a wrong key: those are not 32 hex digits.
    if not _KEY_HEX.fullmatch(plain.lower()):
        raise BundleError("CannotDecryptKey", f"the bundle's {what} cannot be decrypted with this private key")
    return bytes.fromhex(plain.decode())


def load_private_key(path: str | Path) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise BundleError("BadKey", f"{path}: cannot load private key ({err})") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise BundleError("BadKey", f"{path}: bundle keys must be RSA")
    return key


def load_certificate(path: str | Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as err:
        raise BundleError("BadCertificate", f"{path}: cannot load certificate ({err})") from None


def key_matches_cert(key: rsa.RSAPrivateKey, cert: x509.Certificate) -> bool:
    return key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
