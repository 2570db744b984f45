"""Walrus's bundled-image operations (internal, signed, DESIGN section 3).

Called by the CLC (role clc): `ValidateImage`, `CacheImage`, `FlushImage` as ordinary internal RPCs
(`POST /internal/<Operation>`, JSON). Called by NCs (role nc): `GetDecryptedImage`, whose response is the image
itself, so it is served at `POST /internal/stream/GetDecryptedImage` (see `GET_DECRYPTED_IMAGE_PATH`): the
request is a signed JSON `GetDecryptedImageRequest` exactly as for other internal calls; the response body is
the raw image (or a byte range of it), and the response headers carry a signature over a descriptor of the
bytes sent (`image_descriptor`), including the SHA-256 of the whole image, which the caller checks after the
download. Errors are JSON `{"code", "message"}` as for every internal call.

Manifest validation failures come back as RpcError with one of these codes (HTTP 4xx): NoSuchBucket,
NoSuchKey (manifest), ManifestTooLarge, ForbiddenXml, MalformedManifest, UnsupportedManifest, PartCountMismatch,
PartsOutOfOrder, BadPartIndex, BadPartName, TooManyParts, UnsignedManifest, SignatureMismatch (not signed by the
cloud or by a known certificate of the bucket owner's account), SignerNotBucketOwner, SignerInactive,
CannotDecryptKey (not encrypted for this cloud), MissingPart, PartSizeMismatch, PartDigestMismatch,
DecryptionFailed, CorruptImage, ImageDigestMismatch, ImageSizeMismatch, BadImageArchive, ImageTooLarge,
ImageTooLargeForCache (507), ImageChanged (409: the bundle was overwritten while it was being decrypted).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

GET_DECRYPTED_IMAGE_PATH = "/internal/stream/GetDecryptedImage"
HEADER_IMAGE_RANGE = "X-Koala-Image-Range"  # "start-end/total", end exclusive
HEADER_IMAGE_SHA256 = "X-Koala-Image-Sha256"  # of the whole image


class ImageRef(BaseModel):
    """A bundle in Walrus: its bucket and the manifest's key (which may include a prefix: `dir/x.manifest.xml`)."""

    bucket: str = Field(min_length=1, max_length=255)
    manifest_key: str = Field(min_length=1, max_length=1024)


class ValidateImageRequest(ImageRef):
    """`certificates`: PEM certificates of the registering account that may have signed the manifest (the CLC
    knows them); each one Walrus uses is confirmed with the CLC's ResolveCertificate. Walrus also remembers the
    certificates it has confirmed before, and always accepts the cloud's own certificate."""

    certificates: list[str] = Field(default_factory=list, max_length=64)
    check_part_digests: bool = True  # read every part and compare its SHA-1 (CacheImage always does)


class ValidateImageResponse(BaseModel):
    bucket: str
    manifest_key: str
    manifest_sha256: str
    image_name: str
    kind: Literal["machine", "kernel", "ramdisk"]
    architecture: str
    kernel_id: str | None = None
    ramdisk_id: str | None = None
    block_device_mappings: list[tuple[str, str]] = Field(default_factory=list)
    size: int
    bundled_size: int
    parts: int
    owner_account_id: str  # the bucket owner's account
    signer: Literal["user", "cloud"]
    signer_account_id: str


class CacheImageRequest(ValidateImageRequest):
    wait: bool = False  # false: start decrypting in the background and answer at once


class CacheImageResponse(BaseModel):
    state: Literal["cached", "caching"]
    size: int
    image_sha256: str = ""  # when cached


class FlushImageRequest(ImageRef):
    pass


class FlushImageResponse(BaseModel):
    flushed: bool  # false if the image was not cached


class GetDecryptedImageRequest(ImageRef):
    """`start`/`end` select bytes [start, end) (end None: to the end), so an NC can resume a download. They are
    part of the signed body; a plain HTTP `Range: bytes=N-M` header is honoured when they are absent."""

    start: int | None = Field(None, ge=0)
    end: int | None = Field(None, ge=0)


def image_descriptor(status: int, start: int, end: int, total: int, image_sha256: str) -> bytes:
    """What the signature of a GetDecryptedImage response covers (in place of the body's hash)."""
    return f"GetDecryptedImage\n{status}\n{start}-{end}/{total}\n{image_sha256}".encode()
