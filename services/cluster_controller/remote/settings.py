"""The KOALA_REMOTE_* settings of a remote zone (a mixin of the CC's configuration), validated at start.

A CC with KOALA_REMOTE_ENDPOINT set serves a zone whose instances run in another EC2-compatible cloud. Its maps
are space-separated `LOCAL=REMOTE` entries: KOALA_REMOTE_IMAGE_MAP maps local machine images to the remote's
image ids, KOALA_REMOTE_VMTYPE_MAP local VM types to the remote's instance types (a bare `NAME` keeps the name).
A VM type with no entry is not offered in the zone; a launch of an image with no entry is refused with the reason,
unless KOALA_REMOTE_AUTO_UPLOAD is on: then the local bundle is re-bundled for the remote cloud, uploaded to its S3
and registered there on demand (uploads.py), with the KOALA_REMOTE_S3_ENDPOINT / _CLOUD_CERT / _SIGNING_* settings.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator

MAX_MAP_ENTRIES = 1000
_IMAGE_ID = re.compile(r"^[a-z]{3}-[0-9a-f]{8,17}$")
_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PREFIX = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")


def parse_map(text: str, what: str, key: re.Pattern[str], value: re.Pattern[str], bare: bool) -> dict[str, str]:
    """`A=B C=D` -> {A: B, C: D}; `A` alone means A=A when `bare`."""
    entries: dict[str, str] = {}
    for item in text.split():
        local, sep, remote = item.partition("=")
        if not sep:
            if not bare:
                raise ValueError(f"{what}: {item!r} is not LOCAL=REMOTE")
            remote = local
        if not key.match(local):
            raise ValueError(f"{what}: {local!r} is not a valid local name")
        if not value.match(remote):
            raise ValueError(f"{what}: {remote!r} is not a valid remote name")
        if local in entries:
            raise ValueError(f"{what}: {local} appears twice")
        entries[local] = remote
    if len(entries) > MAX_MAP_ENTRIES:
        raise ValueError(f"{what}: at most {MAX_MAP_ENTRIES} entries")
    return entries


class RemoteSettings(BaseModel):
    KOALA_REMOTE_ENDPOINT: str = Field(
        "",
        description="EC2 endpoint of the remote cloud this zone bursts into (http(s)://HOST:PORT/PATH); empty: "
        "a zone of local nodes.",
    )
    KOALA_REMOTE_REGION: str = Field("us-east-1", description="The remote's region name (for request signing).")
    KOALA_REMOTE_ZONE: str = Field("", description="The remote availability zone to launch into (empty: any).")
    KOALA_REMOTE_CREDENTIALS: Path | None = Field(
        None,
        description="File with the remote's EC2_ACCESS_KEY and EC2_SECRET_KEY (eucarc syntax); it must belong to "
        "the CC's user and be readable by nobody else (mode 600).",
    )
    KOALA_REMOTE_IMAGE_MAP: str = Field("", description="Local image id -> remote image id: `emi-1=ami-2 ...`.")
    KOALA_REMOTE_VMTYPE_MAP: str = Field(
        "", description="Local VM type -> remote instance type: `m1.small=t3.micro c1.medium ...`."
    )
    KOALA_REMOTE_MAX_INSTANCES: int = Field(
        20, ge=0, le=10000, description="Live instances this zone runs in the remote cloud at most (its capacity)."
    )
    KOALA_REMOTE_PREFIX: str = Field(
        "",
        description="Names and tags of what this cloud creates remotely start with it (default: koala- and the "
        "first 10 hex digits of this cloud's CA fingerprint).",
    )
    KOALA_REMOTE_TIMEOUT: float = Field(20.0, gt=0, le=120, description="Timeout of one call to the remote.")
    KOALA_REMOTE_LAUNCH_DEADLINE: float = Field(
        300.0, gt=0, description="Seconds a launch is tried again while the remote does not answer, before it fails."
    )
    KOALA_REMOTE_POLL_SECONDS: float = Field(
        0.01, gt=0, description="Wait before polling the remote after a change (then backing off while none)."
    )
    KOALA_REMOTE_POLL_MAX: float = Field(
        10.0, gt=0, description="Longest wait between polls of the remote (steady state, or while it fails)."
    )
    KOALA_REMOTE_CONCURRENCY: int = Field(8, ge=1, le=64, description="Calls in flight to the remote at once.")
    KOALA_REMOTE_KEEP_UNUSED: float = Field(
        60.0,
        ge=0,
        le=86400,
        description="Seconds the key pairs and security groups made remotely stay after the last instance using "
        "them ended, so the next burst launch with the same key and groups finds them (0: deleted at once).",
    )
    KOALA_REMOTE_AUTO_UPLOAD: bool = Field(
        False,
        description="A launch of a local image with no KOALA_REMOTE_IMAGE_MAP entry re-bundles the image for the "
        "remote cloud, uploads it to KOALA_REMOTE_S3_ENDPOINT and registers it there (once per image; kernel and "
        "ramdisk too), instead of being refused.",
    )
    KOALA_REMOTE_S3_ENDPOINT: str = Field(
        "", description="The remote cloud's S3 endpoint (its Walrus) that re-bundled images are uploaded to."
    )
    KOALA_REMOTE_CLOUD_CERT: Path | None = Field(
        None,
        description="The remote cloud's certificate (its EUCALYPTUS_CERT; EC2's is shipped with ec2-ami-tools): "
        "re-bundled images' keys are encrypted for it. Configured, not fetched: EC2 does not serve it, and a "
        "certificate fetched from the endpoint it protects against would prove nothing.",
    )
    KOALA_REMOTE_SIGNING_CERT: Path | None = Field(
        None, description="The remote account's X.509 certificate (its EC2_CERT): re-bundled manifests are signed so."
    )
    KOALA_REMOTE_SIGNING_KEY: Path | None = Field(
        None, description="Its private key (EC2_PRIVATE_KEY); as the credentials file, readable by the CC's user only."
    )
    KOALA_REMOTE_UPLOAD_MAX_MB: int = Field(
        20480, ge=1, description="Largest local image (MiB, decrypted) re-bundled for the remote cloud."
    )
    KOALA_WALRUS_URL: str = Field(
        "", description="This cloud's Walrus (base URL): where a remote zone gets the images it re-bundles."
    )

    @field_validator("KOALA_REMOTE_ENDPOINT", "KOALA_REMOTE_S3_ENDPOINT")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.query:
            raise ValueError(f"{value!r} is not an http(s)://HOST[:PORT][/PATH] URL")
        return value.rstrip("/")

    @field_validator("KOALA_REMOTE_IMAGE_MAP")
    @classmethod
    def _images(cls, value: str) -> str:
        parse_map(value, "KOALA_REMOTE_IMAGE_MAP", _IMAGE_ID, _IMAGE_ID, bare=False)
        return value

    @field_validator("KOALA_REMOTE_VMTYPE_MAP")
    @classmethod
    def _types(cls, value: str) -> str:
        parse_map(value, "KOALA_REMOTE_VMTYPE_MAP", _TYPE, _TYPE, bare=True)
        return value

    @field_validator("KOALA_REMOTE_PREFIX")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if value and not _PREFIX.match(value):
            raise ValueError("1-31 lower-case letters, digits and dashes")
        return value

    @property
    def remote(self) -> bool:
        return bool(self.KOALA_REMOTE_ENDPOINT)

    def image_map(self) -> dict[str, str]:
        return parse_map(self.KOALA_REMOTE_IMAGE_MAP, "KOALA_REMOTE_IMAGE_MAP", _IMAGE_ID, _IMAGE_ID, bare=False)

    def vmtype_map(self) -> dict[str, str]:
        return parse_map(self.KOALA_REMOTE_VMTYPE_MAP, "KOALA_REMOTE_VMTYPE_MAP", _TYPE, _TYPE, bare=True)
