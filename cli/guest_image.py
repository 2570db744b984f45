"""The all-in-one cloud's guest image: build it from Debian packages, bundle, upload and register it as a user would.

`koala up` calls `ensure_registered` once the services are healthy and the admin's eucarc exists. Each step uses
the user-facing tools (`koala bundle-image`, `koala upload-bundle`, EC2 RegisterImage through boto3 with the
admin's credentials), so the bring-up exercises the same path a user's image takes; then ModifyImageAttribute
makes them public, so every account can run them. The image ids are kept in
DIR/images.json; a later `koala up` reuses them while the cloud still knows them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from services.cloud_controller.identity.credentials import parse_eucarc

BUILDER = Path(__file__).resolve().parent.parent / "deploy" / "guest-image" / "build.sh"
BUCKET = "koala-images"


class GuestImageError(Exception):
    pass


def ec2_client(eucarc: dict[str, str]):
    return boto3.client(
        "ec2",
        endpoint_url=eucarc["EC2_URL"],
        aws_access_key_id=eucarc["EC2_ACCESS_KEY"],
        aws_secret_access_key=eucarc["EC2_SECRET_KEY"],
        region_name=eucarc.get("AWS_DEFAULT_REGION", "eucalyptus"),
        config=Config(retries={"max_attempts": 2}),
    )


def build() -> Path:
    """Run the guest image builder (cached by its inputs); return the directory with kernel, initrd, root.img."""
    result = subprocess.run([str(BUILDER)], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise GuestImageError(f"guest image build failed:\n{result.stderr[-2000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def _koala(args: list[str], env: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=env, timeout=900)
    if result.returncode != 0:
        raise GuestImageError(f"koala {args[0]} failed: {result.stderr.strip()[-2000:]}")


def _known(ec2, images: dict[str, str]) -> bool:
    try:
        found = ec2.describe_images(ImageIds=list(images.values()))["Images"]
    except (ClientError, BotoCoreError):
        return False
    return len(found) == len(images)


def ensure_registered(state_dir: Path, eucarc_path: Path, log=print) -> dict[str, str]:
    """Make sure the guest kernel, ramdisk and machine image are registered; return their ids."""
    record = state_dir / "images.json"
    eucarc = parse_eucarc(eucarc_path)
    ec2 = ec2_client(eucarc)
    if record.exists():
        recorded: dict[str, str] = json.loads(record.read_text())
        if _known(ec2, recorded):
            _make_public(ec2, recorded)
            return recorded
    artifacts = build()
    env = {**os.environ, **eucarc}
    images: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="koala-bundle-") as work:
        for name, source, extra in (
            ("kernel", artifacts / "kernel", ["--kernel", "true"]),
            ("ramdisk", artifacts / "initrd", ["--ramdisk", "true"]),
            ("machine", artifacts / "root.img", []),
        ):
            if name == "machine":
                extra = ["--kernel", images["kernel"], "--ramdisk", images["ramdisk"]]
            prefix = f"koala-guest-{name}"
            log(f"bundling and registering the guest {name} image")
            _koala(["bundle-image", "-i", str(source), "-d", work, "-p", prefix, *extra], env)
            manifest = Path(work) / f"{prefix}.manifest.xml"
            _koala(["upload-bundle", "-b", BUCKET, "-m", str(manifest)], env)
            try:
                answer = ec2.register_image(
                    ImageLocation=f"{BUCKET}/{manifest.name}", Name=prefix, Architecture="x86_64"
                )
            except (ClientError, BotoCoreError) as err:
                raise GuestImageError(f"RegisterImage of the guest {name} image failed: {err}") from None
            images[name] = answer["ImageId"]
    _make_public(ec2, images)
    record.write_text(json.dumps(images, indent=2) + "\n")
    return images


def _make_public(ec2, images: dict[str, str]) -> None:
    """Every account may launch the guest images, as the images an Eucalyptus admin installed for users."""
    for image_id in images.values():
        try:
            ec2.modify_image_attribute(ImageId=image_id, LaunchPermission={"Add": [{"Group": "all"}]})
        except (ClientError, BotoCoreError) as err:
            raise GuestImageError(f"making {image_id} public failed: {err}") from None
