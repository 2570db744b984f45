"""`koala bundle-image | unbundle | upload-bundle | delete-bundle`: the EC2 bundling tools, in Python 3.

Options follow ec2-bundle-image / euca-bundle-image; defaults come from the eucarc environment (EC2_PRIVATE_KEY,
EC2_CERT, EC2_USER_ID, EUCALYPTUS_CERT, EC2_ACCESS_KEY, EC2_SECRET_KEY, S3_URL). The format work is in
common/bundle (the S3 transfers in common/bundle/upload.py); this module is argument handling and progress.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from common.bundle import keys, upload
from common.bundle import manifest as manifest_mod
from common.bundle.errors import BundleError
from common.bundle.pipeline import DEFAULT_PART_SIZE, DirectoryParts, bundle_image, decrypt_bundle

ARCHITECTURES = ("i386", "x86_64", "armhf", "aarch64")
MAX_PART_SIZE = 5 << 30  # one S3 PUT


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _size(text: str) -> int:
    """Bytes, with an optional K/M/G suffix (binary)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    value = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if value and value[-1] in units:
            return int(float(value[:-1]) * units[value[-1]])
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None


def _image_id(text: str) -> str:
    """`--kernel`/`--ramdisk`: an image id (eki-/aki-/eri-/ari- + hex) or `true` (this bundle is one)."""
    if text.lower() == "true" or re.fullmatch(r"[a-z]{3}-[0-9a-fA-F]{8,17}", text):
        return text.lower() if text.lower() == "true" else text
    raise argparse.ArgumentTypeError(f"{text!r} is neither an image id (eki-0123abcd) nor `true`")


def _account(text: str) -> str:
    value = text.replace("-", "")
    if not re.fullmatch(r"\d{1,20}", value):
        raise argparse.ArgumentTypeError(f"account id {text!r} must be digits (e.g. 123456789012)")
    return value


def _mappings(text: str) -> list[tuple[str, str]]:
    """`ami=sda1,root=/dev/sda1,ephemeral0=sda2,swap=sda3` as ec2-bundle-image takes it."""
    pairs = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        virtual, sep, device = item.partition("=")
        if not sep or not virtual or not device:
            raise argparse.ArgumentTypeError(f"block device mapping {item!r} is not virtual=device")
        pairs.append((virtual, device))
    return pairs


class ProgressBar:
    """A one-line progress bar on a terminal; silent when stderr is not one."""

    def __init__(self, label: str, total: int, stream: Any = sys.stderr):
        self.label, self.total, self.stream = label, max(total, 1), stream
        self.enabled = bool(getattr(stream, "isatty", lambda: False)())
        self.done, self.start, self._last = 0, time.monotonic(), 0.0

    def __call__(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and self.done < self.total:
            return
        self._last = now
        fraction = min(self.done / self.total, 1.0)
        rate = self.done / max(now - self.start, 1e-6) / (1 << 20)
        bar = "#" * int(fraction * 30)
        self.stream.write(f"\r{self.label} [{bar:<30}] {fraction:6.1%} {rate:7.1f} MiB/s")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def register(subparsers: argparse._SubParsersAction) -> None:
    bundle = subparsers.add_parser("bundle-image", help="bundle an image file (tar, gzip, encrypt, split, sign)")
    bundle.add_argument("-i", "--image", required=True, type=Path, help="the image file")
    bundle.add_argument("-k", "--privatekey", default=_env("EC2_PRIVATE_KEY"), help="user private key (PEM)")
    bundle.add_argument("-c", "--cert", default=_env("EC2_CERT"), help="user certificate (PEM)")
    bundle.add_argument("-u", "--user", type=_account, default=_env("EC2_USER_ID"), help="account id (12 digits)")
    bundle.add_argument("-r", "--arch", default="x86_64", choices=ARCHITECTURES, help="architecture")
    bundle.add_argument("-d", "--destination", type=Path, default=Path("/tmp"), help="directory for the bundle")
    bundle.add_argument("-p", "--prefix", help="file name prefix (default: the image's name)")
    bundle.add_argument(
        "--ec2cert", "--cloud-cert", dest="cloud_cert", default=_env("EUCALYPTUS_CERT"), help="the cloud's cert"
    )
    bundle.add_argument("--kernel", type=_image_id, help="default kernel id, or `true` to bundle a kernel image")
    bundle.add_argument("--ramdisk", type=_image_id, help="default ramdisk id, or `true` to bundle a ramdisk image")
    bundle.add_argument(
        "-B", "--block-device-mapping", type=_mappings, default=[], help="e.g. ami=sda1,root=/dev/sda1,swap=sda3"
    )
    bundle.add_argument("--part-size", type=_size, default=DEFAULT_PART_SIZE, help="bytes per part (default 10M)")
    bundle.set_defaults(func=_bundle)

    unbundle = subparsers.add_parser("unbundle", help="check and decrypt a bundle back into its image")
    unbundle.add_argument("-m", "--manifest", required=True, type=Path, help="the bundle's manifest")
    unbundle.add_argument("-k", "--privatekey", default=_env("EC2_PRIVATE_KEY"), help="user (or cloud) private key")
    unbundle.add_argument(
        "-c", "--cert", default=_env("EC2_CERT"), help="certificate that signed the manifest (default: EC2_CERT)"
    )
    unbundle.add_argument("-s", "--source", type=Path, help="directory of the parts (default: the manifest's)")
    unbundle.add_argument("-d", "--destination", type=Path, default=Path("."), help="directory for the image")
    unbundle.set_defaults(func=_unbundle)

    upload = subparsers.add_parser("upload-bundle", help="upload a bundle to Walrus (S3)")
    upload.add_argument("-b", "--bucket", required=True, help="bucket[/prefix]")
    upload.add_argument("-m", "--manifest", required=True, type=Path, help="the bundle's manifest")
    upload.add_argument("--acl", default="aws-exec-read", help="canned ACL (default aws-exec-read)")
    upload.add_argument("--directory", type=Path, help="directory of the parts (default: the manifest's)")
    _s3_options(upload)
    upload.add_argument("--concurrency", type=int, default=4, help="parallel part uploads")
    upload.add_argument("--retries", type=int, default=5, help="attempts per file")
    upload.set_defaults(func=_upload)

    delete = subparsers.add_parser("delete-bundle", help="delete an uploaded bundle from Walrus (S3)")
    delete.add_argument("-b", "--bucket", required=True, help="bucket[/prefix]")
    which = delete.add_mutually_exclusive_group(required=True)
    which.add_argument("-m", "--manifest", type=Path, help="local copy of the manifest")
    which.add_argument("-p", "--prefix", help="bundle name: deletes <prefix>.manifest.xml and its parts")
    delete.add_argument("--clear", action="store_true", help="also delete the bucket if it is then empty")
    _s3_options(delete)
    delete.set_defaults(func=_delete)


def _s3_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-a", "--access-key", default=_env("EC2_ACCESS_KEY"), help="access key id")
    parser.add_argument("-s", "--secret-key", default=_env("EC2_SECRET_KEY"), help="secret access key")
    parser.add_argument("-U", "--url", default=_env("S3_URL"), help="Walrus URL (S3_URL)")


def _fail(command: str, message: str) -> int:
    print(f"koala {command}: {message}", file=sys.stderr)
    return 1


def _need(command: str, **values: object) -> str | None:
    missing = [name for name, value in values.items() if not value]
    if missing:
        return f"missing {', '.join(missing)} (give the option or source your eucarc)"
    return None


# ------------------------------------------------------------------ bundle-image / unbundle


def _bundle(args: argparse.Namespace) -> int:
    problem = _need("bundle-image", privatekey=args.privatekey, cert=args.cert, user=args.user, ec2cert=args.cloud_cert)
    if problem:
        return _fail("bundle-image", problem)
    if not args.image.is_file():
        return _fail("bundle-image", f"{args.image} is not a file")
    if not 1024 <= args.part_size <= MAX_PART_SIZE:
        return _fail("bundle-image", f"--part-size must be between 1 KiB and {MAX_PART_SIZE >> 30} GiB")
    progress = ProgressBar("bundling", args.image.stat().st_size)
    try:
        result = bundle_image(
            args.image,
            args.destination,
            user_key=keys.load_private_key(args.privatekey),
            user_cert=keys.load_certificate(args.cert),
            cloud_cert=keys.load_certificate(args.cloud_cert),
            account=args.user,
            prefix=args.prefix,
            architecture=args.arch,
            kernel_id=args.kernel,
            ramdisk_id=args.ramdisk,
            block_device_mappings=args.block_device_mapping,
            part_size=args.part_size,
            progress=progress,
        )
    except BundleError as err:
        return _fail("bundle-image", err.message)
    except OSError as err:
        return _fail("bundle-image", str(err))
    finally:
        progress.close()
    for path in result.part_paths:
        print(f"part: {path}")
    print(f"manifest: {result.manifest_path}")
    return 0


def _unbundle(args: argparse.Namespace) -> int:
    problem = _need("unbundle", privatekey=args.privatekey, cert=args.cert)
    if problem:
        return _fail("unbundle", problem)
    try:
        raw = args.manifest.read_bytes()[: manifest_mod.MAX_MANIFEST_BYTES + 1]
        manifest = manifest_mod.parse(raw)
        cert = keys.load_certificate(args.cert)
        if not manifest_mod.signature_valid(raw, manifest.signature, cert):
            raise BundleError("SignatureMismatch", f"the manifest is not signed by {args.cert}")
        key = keys.load_private_key(args.privatekey)
        key_for = "user"
        try:
            keys.unwrap(manifest.user_encrypted_key, key, "key")
        except BundleError:
            key_for = "cloud"  # the cloud's administrator unbundling with the cloud key
        args.destination.mkdir(parents=True, exist_ok=True)
        target = args.destination / manifest.name
        temp = args.destination / f".{manifest.name}.unbundling"
        progress = ProgressBar("unbundling", manifest.bundled_size)
        try:
            with temp.open("wb") as out:
                decrypt_bundle(
                    manifest,
                    key,
                    DirectoryParts(args.source or args.manifest.parent),
                    out,
                    key_for=key_for,
                    progress=progress,
                )
            os.replace(temp, target)
        finally:
            progress.close()
            temp.unlink(missing_ok=True)
    except BundleError as err:
        return _fail("unbundle", f"{err.code}: {err.message}")
    except OSError as err:
        return _fail("unbundle", str(err))
    print(f"image: {target}")
    return 0


# ------------------------------------------------------------------ upload-bundle / delete-bundle


def _s3(args: argparse.Namespace) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        s3={"addressing_style": "path"},
        signature_version="s3v4",
        retries={"max_attempts": 3, "mode": "standard"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=max(args.__dict__.get("concurrency", 4), 4) + 2,
    )
    return boto3.client(
        "s3",
        endpoint_url=args.url,
        aws_access_key_id=args.access_key,
        aws_secret_access_key=args.secret_key,
        region_name="us-east-1",
        config=config,
    )


def _split_bucket(text: str) -> tuple[str, str]:
    bucket, _, prefix = text.partition("/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def _upload(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    problem = _need("upload-bundle", access_key=args.access_key, secret_key=args.secret_key, url=args.url)
    if problem:
        return _fail("upload-bundle", problem)
    try:
        raw = args.manifest.read_bytes()[: manifest_mod.MAX_MANIFEST_BYTES + 1]
        manifest = manifest_mod.parse(raw)
        directory = args.directory or args.manifest.parent
        files = [directory / part.filename for part in manifest.parts]
        for path in files:
            if not path.is_file():
                raise BundleError("MissingPart", f"{path} does not exist")
        bucket, prefix = _split_bucket(args.bucket)
        s3 = _s3(args)
        upload.ensure_bucket(s3, bucket)
        progress = ProgressBar("uploading", sum(p.stat().st_size for p in files))
        try:
            manifest_key = upload.upload_bundle(
                s3,
                bucket,
                prefix,
                args.manifest,
                files,
                acl=args.acl,
                concurrency=args.concurrency,
                attempts=args.retries,
                progress=progress,
            )
        finally:
            progress.close()
    except BundleError as err:
        return _fail("upload-bundle", f"{err.code}: {err.message}")
    except (BotoCoreError, ClientError, OSError) as err:
        return _fail("upload-bundle", str(err))
    print(f"uploaded: {bucket}/{manifest_key}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    problem = _need("delete-bundle", access_key=args.access_key, secret_key=args.secret_key, url=args.url)
    if problem:
        return _fail("delete-bundle", problem)
    bucket, prefix = _split_bucket(args.bucket)
    try:
        s3 = _s3(args)
        if args.manifest:
            name = args.manifest.name
            raw = args.manifest.read_bytes()[: manifest_mod.MAX_MANIFEST_BYTES + 1]
        else:
            name = f"{args.prefix}.manifest.xml"
            response = s3.get_object(Bucket=bucket, Key=prefix + name)
            raw = response["Body"].read(manifest_mod.MAX_MANIFEST_BYTES + 1)
        manifest = manifest_mod.parse(raw)
        keys_to_delete = [prefix + part.filename for part in manifest.parts] + [prefix + name]
        upload.delete_keys(s3, bucket, keys_to_delete)
        if args.clear:
            listing = s3.list_objects_v2(Bucket=bucket, MaxKeys=1)
            if not listing.get("KeyCount"):
                s3.delete_bucket(Bucket=bucket)
    except BundleError as err:
        return _fail("delete-bundle", f"{err.code}: {err.message}")
    except (BotoCoreError, ClientError, OSError) as err:
        return _fail("delete-bundle", str(err))
    print(f"deleted {len(keys_to_delete)} objects from {bucket}")
    return 0
