"""Uploading a bundle (its parts, then its manifest) to an S3 bucket and deleting it again, with a boto3 S3
client (botocore's signer): shared by `koala upload-bundle`/`delete-bundle` and a remote zone's CC, which
re-bundles local images for the remote cloud. Synchronous (boto3): run it in a thread from async code.

Errors are BundleError with the HTTP status the store answered (0 when none came): a 4xx other than 408/429 is a
refusal that trying again will not change; anything else may pass on a later attempt.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from common.bundle.errors import BundleError

Progress = Callable[[int], None]


def status_of(err: BaseException) -> int:
    """The HTTP status of a botocore ClientError (0 for a failure with no answer)."""
    response = getattr(err, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def refused(status: int) -> bool:
    return 400 <= status < 500 and status not in (408, 429)


def retry(attempts: int, action: Callable[[], object], what: str) -> Any:
    """`action()`, tried up to `attempts` times while the failure may pass (no answer, 5xx, 408, 429)."""
    from botocore.exceptions import BotoCoreError, ClientError

    for attempt in range(1, attempts + 1):
        try:
            return action()
        except (BotoCoreError, ClientError, OSError) as err:
            status = status_of(err)
            if attempt == attempts or refused(status):
                raise BundleError("UploadFailed", f"{what}: {err}", status or 503) from None
            time.sleep(min(0.2 * 2**attempt, 5.0))
    return None


def ensure_bucket(s3: Any, bucket: str, attempts: int = 3) -> None:
    """Create `bucket` unless it exists (and is ours)."""
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=bucket)
        return
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
            raise BundleError("BucketUnavailable", f"bucket {bucket}: {err}", status_of(err) or 503) from None
    retry(attempts, lambda: s3.create_bucket(Bucket=bucket), f"creating bucket {bucket}")


def upload_bundle(
    s3: Any,
    bucket: str,
    key_prefix: str,
    manifest_path: Path,
    part_paths: list[Path],
    *,
    acl: str = "aws-exec-read",
    concurrency: int = 4,
    attempts: int = 5,
    progress: Progress | None = None,
) -> str:
    """Put every part (Content-MD5 checked by the store), then the manifest, under `key_prefix`; the manifest's
    key. The manifest goes last, so a bundle is never visible before its parts are."""

    def put(path: Path, key: str) -> None:
        digest = hashlib.md5()
        with path.open("rb") as handle:  # streamed: memory stays small whatever the part size
            while block := handle.read(1 << 20):
                digest.update(block)
        md5 = base64.b64encode(digest.digest()).decode()

        def once() -> None:
            with path.open("rb") as body:
                s3.put_object(Bucket=bucket, Key=key, Body=body, ACL=acl, ContentMD5=md5)

        retry(attempts, once, key)
        if progress:
            progress(path.stat().st_size)

    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        futures = [pool.submit(put, path, key_prefix + path.name) for path in part_paths]
        for future in as_completed(futures):
            future.result()
    manifest_key = key_prefix + manifest_path.name
    put(manifest_path, manifest_key)
    return manifest_key


def delete_keys(s3: Any, bucket: str, keys: list[str]) -> None:
    for start in range(0, len(keys), 1000):
        batch = [{"Key": key} for key in keys[start : start + 1000]]
        s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
