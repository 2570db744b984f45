from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.bundle import keys

DATA = Path(__file__).resolve().parent.parent / "data" / "bundles"
KEYS = DATA / "keys"
# (folder, image name) of the three bundles made by Amazon's ec2-ami-tools 1.5.3
REFERENCE = [("small", "small.img"), ("multipart", "multipart.img"), ("kernel", "vmlinuz-test")]


def original_sha1s() -> dict[str, str]:
    lines = (DATA / "original-images.sha1").read_text().split("\n")
    return {name: digest for digest, name in (line.split() for line in lines if line.strip())}


@dataclass
class Keys:
    user_key: object
    user_cert: object
    cloud_key: object
    cloud_cert: object


@pytest.fixture(scope="session")
def ref_keys() -> Keys:
    return Keys(
        keys.load_private_key(KEYS / "user-pk.pem"),
        keys.load_certificate(KEYS / "user-cert.pem"),
        keys.load_private_key(KEYS / "cloud-pk.pem"),
        keys.load_certificate(KEYS / "cloud-cert.pem"),
    )


def copy_reference(folder: str, dest: Path) -> Path:
    """A writable copy of a reference bundle (tests tamper with it)."""
    target = dest / folder
    shutil.copytree(DATA / folder, target)
    for path in target.iterdir():
        path.chmod(0o644)
    return target
