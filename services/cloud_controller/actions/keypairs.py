"""Key pairs: CreateKeyPair, ImportKeyPair, DeleteKeyPair, DescribeKeyPairs.

Fingerprints as AWS computes them: a created RSA key's is the SHA-1 of its PKCS#8 DER private key, an
imported RSA key's the MD5 of its DER SubjectPublicKeyInfo (both colon-separated hex); an ed25519 key's is
the base64 SHA-256 of its OpenSSH public key blob. The key pairs are kept by the compute layer's store
(`compute/key_pairs.py`, `ctx.compute.key_pairs`), the public key in OpenSSH form for instance metadata.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from services.cloud_controller.actions import Context, action, tags
from services.cloud_controller.ec2.errors import Ec2Error, invalid, missing
from services.cloud_controller.ec2.filters import Filters

_NAME = re.compile(r"^[\x20-\x7e]{1,255}$")
MIN_RSA_BITS, MAX_RSA_BITS = 1024, 16384
MAX_PUBLIC_KEY = 16 * 1024


def _colon_hex(digest: bytes) -> str:
    return ":".join(f"{byte:02x}" for byte in digest)


def _ssh_blob(public_key: Any) -> bytes:
    line = public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return base64.b64decode(line.split()[1])


def created_fingerprint(private_key: Any) -> str:
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return base64.b64encode(hashlib.sha256(_ssh_blob(private_key.public_key())).digest()).decode()
    der = private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return _colon_hex(hashlib.sha1(der).digest())


def imported_fingerprint(public_key: Any) -> str:
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return base64.b64encode(hashlib.sha256(_ssh_blob(public_key)).digest()).decode()
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return _colon_hex(hashlib.md5(der).digest())


def openssh_line(public_key: Any) -> str:
    line: bytes = public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return line.decode()


def parse_public_key(material: bytes) -> Any:
    """An RSA or ed25519 public key from OpenSSH, RFC 4716 (SSH2), PEM or DER form."""
    if len(material) > MAX_PUBLIC_KEY:
        raise invalid("PublicKeyMaterial", "(too long)", "Key material is at most 16 KiB.")
    text = material.strip()
    candidates: list[Callable[[], object]] = []
    if text.startswith(b"---- BEGIN SSH2 PUBLIC KEY ----"):
        body = [
            line
            for line in text.splitlines()[1:]
            if line and not line.startswith(b"----") and b":" not in line and not line.endswith(b"\\")
        ]
        blob = b"".join(line.strip() for line in body)
        try:
            wire = base64.b64decode(blob)
            kind = wire[4 : 4 + int.from_bytes(wire[:4], "big")]
            candidates.append(lambda: serialization.load_ssh_public_key(kind + b" " + blob))
        except ValueError:
            pass
    candidates += [
        lambda: serialization.load_ssh_public_key(text),
        lambda: serialization.load_pem_public_key(text),
        lambda: serialization.load_der_public_key(material),
    ]
    for load in candidates:
        try:
            key = load()
        except (ValueError, TypeError, IndexError, UnsupportedAlgorithm):
            continue
        if isinstance(key, rsa.RSAPublicKey):
            if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
                raise Ec2Error("InvalidKey.Format", f"RSA keys must be {MIN_RSA_BITS} to {MAX_RSA_BITS} bits")
            return key
        if isinstance(key, ed25519.Ed25519PublicKey):
            return key
        raise Ec2Error("InvalidKey.Format", "Key is not in valid OpenSSH public key format (RSA or ED25519 only)")
    raise Ec2Error("InvalidKey.Format", "Key is not in valid OpenSSH public key format")


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise invalid("KeyName", name, "Key names are 1 to 255 ASCII characters.")
    return name


async def _store(ctx: Context, name: str, fingerprint: str, key_type: str, public: str, params: dict[str, Any]) -> str:
    tag_list = tags.tag_specifications(params, "key-pair")
    pairs = tags.check_tags(tag_list)
    return await ctx.compute.key_pairs.create(ctx.owner_id, name, fingerprint, key_type, public, pairs)


def _generate(key_type: str) -> tuple[str, str, str]:
    """(private key PEM as AWS hands it out, fingerprint, OpenSSH public key); CPU-bound, run in a thread."""
    if key_type == "ed25519":
        key: Any = ed25519.Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    return pem.decode().strip(), created_fingerprint(key), openssh_line(key.public_key())


@action("CreateKeyPair")
async def create_key_pair(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    name = _check_name(params["KeyName"])
    key_type = params.get("KeyType") or "rsa"
    if key_type not in ("rsa", "ed25519"):
        raise invalid("KeyType", key_type, "rsa or ed25519.")
    if (params.get("KeyFormat") or "pem") != "pem":
        raise invalid("KeyFormat", params["KeyFormat"], "Only pem is supported.")
    if await ctx.compute.key_pairs.get(ctx.owner_id, name):
        raise Ec2Error("InvalidKeyPair.Duplicate", f"The keypair '{name}' already exists.")
    material, fingerprint, public = await asyncio.get_running_loop().run_in_executor(None, _generate, key_type)
    key_pair_id = await _store(ctx, name, fingerprint, key_type, public, params)
    return {
        "KeyName": name,
        "KeyFingerprint": fingerprint,
        "KeyMaterial": material,
        "KeyPairId": key_pair_id,
        "Tags": (await ctx.compute.tags.tags_for([key_pair_id])).get(key_pair_id) or None,
    }


@action("ImportKeyPair")
async def import_key_pair(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    name = _check_name(params["KeyName"])
    material = params["PublicKeyMaterial"]
    if not material:
        raise missing("PublicKeyMaterial")
    key = parse_public_key(material)
    key_type = "ed25519" if isinstance(key, ed25519.Ed25519PublicKey) else "rsa"
    fingerprint = imported_fingerprint(key)
    key_pair_id = await _store(ctx, name, fingerprint, key_type, openssh_line(key), params)
    return {
        "KeyName": name,
        "KeyFingerprint": fingerprint,
        "KeyPairId": key_pair_id,
        "Tags": (await ctx.compute.tags.tags_for([key_pair_id])).get(key_pair_id) or None,
    }


@action("DeleteKeyPair")
async def delete_key_pair(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    name, key_pair_id = params.get("KeyName"), params.get("KeyPairId")
    if not name and not key_pair_id:
        raise missing("KeyName")
    store = ctx.compute.key_pairs
    found = await store.find_id(ctx.owner_id, name=name, key_pair_id=key_pair_id)
    if found is None and key_pair_id:
        raise Ec2Error("InvalidKeyPair.NotFound", f"The key pair '{key_pair_id[:64]}' does not exist")
    if found is None:  # EC2 answers true for a name that does not exist
        return {"Return": True}
    await store.delete(found)
    return {"Return": True, "KeyPairId": found}


@action("DescribeKeyPairs")
async def describe_key_pairs(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    names, ids = params.get("KeyNames") or [], params.get("KeyPairIds") or []
    filters = Filters.parse(params.get("Filters"), {"key-name", "fingerprint", "key-pair-id", "key-type"})
    rows = await ctx.compute.key_pairs.of_account(ctx.owner_id)
    by_name = {row["name"]: row for row in rows}
    by_id = {row["key_pair_id"]: row for row in rows}
    for name in names:
        if name not in by_name:
            raise Ec2Error("InvalidKeyPair.NotFound", f"The key pair '{name[:255]}' does not exist")
    for key_pair_id in ids:
        if key_pair_id not in by_id:
            raise Ec2Error("InvalidKeyPair.NotFound", f"The key pair '{key_pair_id[:64]}' does not exist")
    if names or ids:
        rows = [row for row in rows if row["name"] in names or row["key_pair_id"] in ids]
    allowed = await ctx.compute.tags.ids_matching(ctx.owner_id, filters.tags)
    selected = [
        row
        for row in rows
        if (allowed is None or row["key_pair_id"] in allowed)
        and filters.match_all(
            {
                "key-name": row["name"],
                "fingerprint": row["fingerprint"],
                "key-pair-id": row["key_pair_id"],
                "key-type": row["key_type"],
            }
        )
    ]
    tag_sets = await ctx.compute.tags.tags_for([row["key_pair_id"] for row in selected]) if selected else {}
    include_public = bool(params.get("IncludePublicKey"))
    return {
        "KeyPairs": [
            {
                "KeyPairId": row["key_pair_id"],
                "KeyName": row["name"],
                "KeyFingerprint": row["fingerprint"],
                "KeyType": row["key_type"],
                "CreateTime": row["created_at"],
                "PublicKey": row["public_key"] if include_public else None,
                "Tags": tag_sets.get(row["key_pair_id"]),
            }
            for row in selected
        ]
    }
