"""Bundle manifests (version 2007-10-10): model, limited defusedxml parser, byte-exact renderer, signature.

The signature covers the raw text of `<machine_configuration>...</machine_configuration>` followed by
`<image>...</image>` exactly as it stands in the file, so it is checked over the bytes received, never over
re-serialized XML (ec2-ami-tools quotes attributes with `'`, euca2ools with `"`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element, ParseError
from xml.sax.saxutils import escape

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET

from common.bundle.errors import BundleError

MANIFEST_VERSION = "2007-10-10"
MAX_MANIFEST_BYTES = 4 << 20  # ~30,000 parts; a 300 GiB image in 10 MiB parts
MAX_PARTS = 30_000
MAX_TEXT = 4096  # any single element's text (keys are 512 hex characters)
UNSIGNED = "UNSIGNED"
_SHA1_ATTR = " algorithm='SHA1'"
_HEX = re.compile(r"[0-9a-fA-F]+")
_SAFE_NAME = re.compile(r"[A-Za-z0-9._+@=,-][A-Za-z0-9._+@=,~-]{0,254}")


@dataclass
class Part:
    index: int
    filename: str
    digest: str  # SHA-1 of the encrypted part file, lowercase hex


@dataclass
class Manifest:
    name: str
    user: str
    digest: str  # SHA-1 of the tar stream
    size: int  # original image bytes
    bundled_size: int  # sum of part sizes
    ec2_encrypted_key: str
    user_encrypted_key: str
    ec2_encrypted_iv: str
    user_encrypted_iv: str
    parts: list[Part]
    architecture: str = "x86_64"
    block_device_mappings: list[tuple[str, str]] = field(default_factory=list)  # (virtual, device)
    kernel_id: str | None = None
    ramdisk_id: str | None = None
    product_codes: list[str] = field(default_factory=list)
    type: str = "machine"
    kernel_name: str | None = None
    ancestry: list[str] = field(default_factory=list)
    signature: str = ""
    version: str = MANIFEST_VERSION
    bundler_name: str = "koala"
    bundler_version: str = "0.1"
    bundler_release: str = "0"

    @property
    def image_kind(self) -> str:
        """kernel, ramdisk or machine (Eucalyptus convention: `kernel_id`/`ramdisk_id` `true`, or the name)."""
        if (self.kernel_id or "").lower() == "true":
            return "kernel"
        if (self.ramdisk_id or "").lower() == "true":
            return "ramdisk"
        if self.name.startswith("vmlinuz"):
            return "kernel"
        if self.name.startswith("initrd"):
            return "ramdisk"
        return "machine"


# ---------------------------------------------------------------- rendering


def _el(tag: str, text: str | int, attrs: str = "") -> str:
    return f"<{tag}{attrs}>{escape(str(text))}</{tag}>"


def render_machine_configuration(m: Manifest) -> str:
    inner = _el("architecture", m.architecture)
    if m.block_device_mappings:
        maps = "".join(f"<mapping>{_el('virtual', v)}{_el('device', d)}</mapping>" for v, d in m.block_device_mappings)
        inner += f"<block_device_mapping>{maps}</block_device_mapping>"
    if m.kernel_id:
        inner += _el("kernel_id", m.kernel_id)
    if m.ramdisk_id:
        inner += _el("ramdisk_id", m.ramdisk_id)
    if m.product_codes:
        inner += "<product_codes>" + "".join(_el("product_code", c) for c in m.product_codes) + "</product_codes>"
    return f"<machine_configuration>{inner}</machine_configuration>"


def render_image(m: Manifest) -> str:
    inner = _el("name", m.name) + _el("user", m.user) + _el("type", m.type)
    if m.kernel_name:
        inner += _el("kernel_name", m.kernel_name)
    if m.ancestry:
        inner += "<ancestry>" + "".join(_el("ancestor_ami_id", a) for a in m.ancestry) + "</ancestry>"
    inner += _el("digest", m.digest, " algorithm='SHA1'") + _el("size", m.size) + _el("bundled_size", m.bundled_size)
    inner += _el("ec2_encrypted_key", m.ec2_encrypted_key, " algorithm='AES-128-CBC'")
    inner += _el("user_encrypted_key", m.user_encrypted_key, " algorithm='AES-128-CBC'")
    inner += _el("ec2_encrypted_iv", m.ec2_encrypted_iv) + _el("user_encrypted_iv", m.user_encrypted_iv)
    parts = "".join(
        f"<part index='{p.index}'>{_el('filename', p.filename)}{_el('digest', p.digest, _SHA1_ATTR)}</part>"
        for p in m.parts
    )
    inner += f"<parts count='{len(m.parts)}'>{parts}</parts>"
    return f"<image>{inner}</image>"


def render(m: Manifest) -> bytes:
    """The manifest exactly as ec2-ami-tools writes it (one line, single-quoted attributes, no newline)."""
    bundler = _el("name", m.bundler_name) + _el("version", m.bundler_version) + _el("release", m.bundler_release)
    return (
        "<?xml version='1.0'?><manifest>"
        + _el("version", m.version)
        + f"<bundler>{bundler}</bundler>"
        + render_machine_configuration(m)
        + render_image(m)
        + _el("signature", m.signature)
        + "</manifest>"
    ).encode()


# ---------------------------------------------------------------- signature


def signed_region(raw: bytes) -> bytes:
    """machine_configuration text + image text, from the raw manifest bytes (bundles.md)."""
    return _first_span(raw, b"machine_configuration") + _first_span(raw, b"image")


def _first_span(raw: bytes, tag: bytes) -> bytes:
    start = raw.find(b"<" + tag + b">")
    if start < 0:
        return b""
    end = raw.find(b"</" + tag + b">", start)
    if end < 0:
        return b""
    return raw[start : end + len(tag) + 3]


def sign(region: bytes, key: rsa.RSAPrivateKey) -> str:
    return key.sign(region, padding.PKCS1v15(), hashes.SHA1()).hex()


def signature_valid(raw: bytes, signature_hex: str, cert: x509.Certificate) -> bool:
    """True if `signature_hex` is the RSA/SHA-1 signature of the raw manifest's signed region by `cert`."""
    public = cert.public_key()
    if not isinstance(public, rsa.RSAPublicKey) or not signature_hex or not _HEX.fullmatch(signature_hex):
        return False
    try:
        public.verify(bytes.fromhex(signature_hex), signed_region(raw), padding.PKCS1v15(), hashes.SHA1())
    except (InvalidSignature, ValueError):
        return False
    return True


def sign_manifest(m: Manifest, key: rsa.RSAPrivateKey) -> bytes:
    """Render `m` with its signature filled in (the signed text is the rendered text itself)."""
    m.signature = ""
    unsigned = render(m)
    m.signature = sign(signed_region(unsigned), key)
    return render(m)


def manifest_sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


# ---------------------------------------------------------------- parsing


def parse(raw: bytes) -> Manifest:
    """Parse and check a manifest's structure; BundleError with a precise code on any problem."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleError("ManifestTooLarge", f"manifest is {len(raw)} bytes; the limit is {MAX_MANIFEST_BYTES}")
    try:
        root = SafeET.fromstring(raw, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as err:
        raise BundleError("ForbiddenXml", f"manifest uses a DTD or entities, refused: {type(err).__name__}") from None
    except (ParseError, ValueError) as err:
        raise BundleError("MalformedManifest", f"manifest is not well-formed XML: {err}") from None
    if root.tag != "manifest":
        raise BundleError("MalformedManifest", f"root element is <{root.tag}>, expected <manifest>")
    version = _text(root, "version")
    if version != MANIFEST_VERSION:
        raise BundleError("UnsupportedManifest", f"manifest version {version!r}; only {MANIFEST_VERSION} is known")
    image = _child(root, "image")
    mc = root.find("machine_configuration")
    digest = _child(image, "digest")
    if (digest.get("algorithm") or "").upper() != "SHA1":
        raise BundleError("UnsupportedManifest", "image digest algorithm must be SHA1")
    key_el = _child(image, "ec2_encrypted_key")
    if (key_el.get("algorithm") or "AES-128-CBC").upper() != "AES-128-CBC":
        raise BundleError("UnsupportedManifest", "encryption algorithm must be AES-128-CBC")
    bundler = root.find("bundler")
    m = Manifest(
        name=_text(image, "name"),
        user=_text(image, "user", required=False),
        type=_text(image, "type", required=False) or "machine",
        kernel_name=_text(image, "kernel_name", required=False) or None,
        ancestry=[_clean(a.text) for a in image.findall("ancestry/ancestor_ami_id")],
        digest=_hex(_text(image, "digest"), "image digest", 40),
        size=_int(_text(image, "size"), "size"),
        bundled_size=_int(_text(image, "bundled_size"), "bundled_size"),
        ec2_encrypted_key=_hex(_text(image, "ec2_encrypted_key"), "ec2_encrypted_key"),
        user_encrypted_key=_text(image, "user_encrypted_key", required=False),
        ec2_encrypted_iv=_hex(_text(image, "ec2_encrypted_iv"), "ec2_encrypted_iv"),
        user_encrypted_iv=_text(image, "user_encrypted_iv", required=False),
        parts=_parts(_child(image, "parts")),
        signature=_text(root, "signature", required=False),
        version=version,
    )
    if bundler is not None:
        m.bundler_name = _text(bundler, "name", required=False)
        m.bundler_version = _text(bundler, "version", required=False)
        m.bundler_release = _text(bundler, "release", required=False)
    if mc is not None:
        m.architecture = _text(mc, "architecture", required=False) or m.architecture
        m.kernel_id = _text(mc, "kernel_id", required=False) or None
        m.ramdisk_id = _text(mc, "ramdisk_id", required=False) or None
        m.product_codes = [_clean(c.text) for c in mc.findall("product_codes/product_code")]
        m.block_device_mappings = [
            (_text(mp, "virtual"), _text(mp, "device")) for mp in mc.findall("block_device_mapping/mapping")
        ]
    if not _SAFE_NAME.fullmatch(m.name) or m.name in {".", ".."}:
        raise BundleError("MalformedManifest", f"image name {m.name[:80]!r} is not a plain file name")
    return m


def _parts(parts_el: Element) -> list[Part]:
    elements = parts_el.findall("part")
    if len(elements) > MAX_PARTS:
        raise BundleError("TooManyParts", f"{len(elements)} parts; the limit is {MAX_PARTS}")
    count = _int(parts_el.get("count"), "parts count")
    if count != len(elements):
        raise BundleError("PartCountMismatch", f"parts count says {count} but {len(elements)} parts are listed")
    if not elements:
        raise BundleError("MalformedManifest", "the manifest lists no parts")
    parts = []
    for position, element in enumerate(elements):
        index = _int(element.get("index"), "part index")
        if index != position:
            seen = sorted(_int(e.get("index"), "part index") for e in elements)
            if seen == list(range(len(elements))):
                raise BundleError(
                    "PartsOutOfOrder", f"part {position} in the manifest has index {index}: parts must be in order"
                )
            raise BundleError("BadPartIndex", f"part indexes must be 0..{len(elements) - 1}, each once")
        filename = _text(element, "filename")
        if not _SAFE_NAME.fullmatch(filename) or filename in {".", ".."}:
            raise BundleError("BadPartName", f"part file name {filename[:80]!r} is not a plain file name")
        digest_el = _child(element, "digest")
        if (digest_el.get("algorithm") or "SHA1").upper() != "SHA1":
            raise BundleError("UnsupportedManifest", "part digest algorithm must be SHA1")
        parts.append(Part(index, filename, _hex(_clean(digest_el.text), f"part {index} digest", 40)))
    if len({p.filename for p in parts}) != len(parts):
        raise BundleError("BadPartName", "two parts share a file name")
    return parts


def _child(parent: Element, tag: str) -> Element:
    found = parent.find(tag)
    if found is None:
        raise BundleError("MalformedManifest", f"<{parent.tag}> has no <{tag}>")
    return found


def _clean(text: str | None) -> str:
    value = (text or "").strip()
    if len(value) > MAX_TEXT:
        raise BundleError("MalformedManifest", f"an element's text is longer than {MAX_TEXT} characters")
    return value


def _text(parent: Element, tag: str, required: bool = True) -> str:
    found = parent.find(tag)
    if found is None:
        if required:
            raise BundleError("MalformedManifest", f"<{parent.tag}> has no <{tag}>")
        return ""
    return _clean(found.text)


def _int(value: str | None, what: str) -> int:
    if value is None or not value.strip().isdigit() or len(value) > 20:
        raise BundleError("MalformedManifest", f"{what} is not a non-negative integer: {str(value)[:40]!r}")
    return int(value)


def _hex(value: str, what: str, length: int | None = None) -> str:
    if not _HEX.fullmatch(value) or (length is not None and len(value) != length):
        raise BundleError("MalformedManifest", f"{what} is not {'a ' + str(length) + '-digit ' if length else ''}hex")
    return value.lower()
