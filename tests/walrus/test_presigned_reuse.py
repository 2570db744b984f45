"""A presigned URL fetched again and again (Walrus remembers signatures it has verified): still refused once
expired, and a URL that differs from a verified one in any signed part is checked afresh and refused."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from tests.walrus.conftest import Walrus


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_presigned_url_reuse(walrus: Walrus) -> None:
    s3 = walrus.client()
    s3.create_bucket(Bucket="presigned-reuse")
    s3.put_object(Bucket="presigned-reuse", Key="k", Body=b"body")
    s3.put_object(Bucket="presigned-reuse", Key="other", Body=b"other")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "presigned-reuse", "Key": "k"}, ExpiresIn=2)
    for _ in range(3):
        assert fetch(url) == (200, b"body")
    # another key under the same signature, a changed signature: both verified afresh and refused
    status, body = fetch(url.replace("/presigned-reuse/k?", "/presigned-reuse/other?"))
    assert status == 403 and b"SignatureDoesNotMatch" in body
    tampered = url[:-1] + ("0" if url[-1] != "0" else "1")
    status, body = fetch(tampered)
    assert status == 403 and b"SignatureDoesNotMatch" in body
    time.sleep(2.5)
    status, body = fetch(url)  # verified before, but expired now
    assert status == 403 and b"Request has expired" in body
