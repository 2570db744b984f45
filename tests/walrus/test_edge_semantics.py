"""S3 edge semantics: CreateBucket of a bucket one owns, max-keys=0, EncodingType=url, Expect: 100-continue only
after authentication, conditional PUT, presigned-URL expiry errors, x-amz-expected-bucket-owner; through boto3,
awscli, s3cmd and raw HTTP where a client hides the behaviour."""

from __future__ import annotations

import re
import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from botocore.exceptions import ClientError

from tests.walrus.cli import aws_error, aws_ok, s3cmd_config, s3cmd_error, s3cmd_ok
from tests.walrus.conftest import Walrus
from tests.walrus.test_bad_input import signed_headers

ALICE = "111111111111"


def code(excinfo: pytest.ExceptionInfo) -> tuple[str, int]:
    response = excinfo.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def fetch(url: str, method: str = "GET") -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_create_bucket_you_already_own(walrus: Walrus, tmp_path: Path) -> None:
    s3 = walrus.client()
    s3.create_bucket(Bucket="owned", ACL="public-read")
    s3.create_bucket(Bucket="owned")  # us-east-1: 200, and the ACL is reset to the one asked for (private)
    grants = s3.get_bucket_acl(Bucket="owned")["Grants"]
    assert [g["Grantee"].get("ID") for g in grants] == [ALICE]
    aws_ok(walrus, tmp_path, "s3api", "create-bucket", "--bucket", "owned")
    s3.create_bucket(Bucket="owned-zone", CreateBucketConfiguration={"LocationConstraint": "zone-a"})
    with pytest.raises(ClientError) as err:
        s3.create_bucket(Bucket="owned-zone", CreateBucketConfiguration={"LocationConstraint": "zone-a"})
    assert code(err) == ("BucketAlreadyOwnedByYou", 409)
    with pytest.raises(ClientError) as err:
        walrus.client("bob").create_bucket(Bucket="owned")
    assert code(err) == ("BucketAlreadyExists", 409)
    assert "BucketAlreadyExists" in aws_error(
        walrus, tmp_path, "s3api", "create-bucket", "--bucket", "owned", user="bob"
    )


def test_listings_max_keys_zero_and_url_encoding(walrus: Walrus, tmp_path: Path) -> None:
    s3 = walrus.client()
    s3.create_bucket(Bucket="listing-edges")
    keys = ["foo+1/bar", "foo/bar/xyzzy", "quux ab/thud", "asdf+b", "caf\u00e9"]
    for key in keys:
        s3.put_object(Bucket="listing-edges", Key=key, Body=b"x")
    for answer in (
        s3.list_objects_v2(Bucket="listing-edges", MaxKeys=0),
        s3.list_objects(Bucket="listing-edges", MaxKeys=0),
    ):
        assert answer["IsTruncated"] is False and "Contents" not in answer and answer["MaxKeys"] == 0
    assert s3.list_objects_v2(Bucket="listing-edges", MaxKeys=0)["KeyCount"] == 0
    # boto3 asks for url encoding and decodes: the keys come back as they were
    listed = s3.list_objects_v2(Bucket="listing-edges")
    assert sorted(o["Key"] for o in listed["Contents"]) == sorted(keys)
    prefixes = s3.list_objects_v2(Bucket="listing-edges", Delimiter="/")["CommonPrefixes"]
    assert sorted(p["Prefix"] for p in prefixes) == ["foo+1/", "foo/", "quux ab/"]
    # on the wire: percent-encoded as S3 does (space %20, + %2B, / kept)
    url = s3.generate_presigned_url(
        "list_objects_v2", Params={"Bucket": "listing-edges", "Delimiter": "/", "EncodingType": "url"}
    )
    status, body = fetch(url)
    assert status == 200
    assert re.findall(rb"<Prefix>([^<]*)</Prefix>", body)[1:] == [b"foo%2B1/", b"foo/", b"quux%20ab/"]
    assert b"<Key>caf%C3%A9</Key>" in body and b"<Key>asdf%2Bb</Key>" in body
    assert b"<EncodingType>url</EncodingType>" in body
    s3.create_multipart_upload(Bucket="listing-edges", Key="up load+1")
    url = s3.generate_presigned_url("list_multipart_uploads", Params={"Bucket": "listing-edges", "EncodingType": "url"})
    status, body = fetch(url)
    assert status == 200 and b"<Key>up%20load%2B1</Key>" in body
    assert s3.list_multipart_uploads(Bucket="listing-edges")["Uploads"][0]["Key"] == "up load+1"
    with pytest.raises(ClientError) as err:
        s3.list_objects_v2(Bucket="listing-edges", EncodingType="base64")
    assert code(err) == ("InvalidArgument", 400)
    listing = aws_ok(walrus, tmp_path, "s3", "ls", "--recursive", "s3://listing-edges/")
    assert "quux ab/thud" in listing and "foo+1/bar" in listing


def _expect_exchange(walrus: Walrus, headers: dict[str, str], body: bytes) -> tuple[bytes, bytes]:
    """Send a request's head with Expect: 100-continue; return what came back before the body was sent, and
    (when the server said 100) the answer after sending it."""
    url = urlsplit(walrus.url)
    head = ["PUT /expect/obj HTTP/1.1", f"Host: {url.netloc}", "Expect: 100-continue", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("host", "content-length", "expect")]
    with socket.create_connection((url.hostname, url.port), timeout=10) as conn:
        conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        first = conn.recv(65536)
        rest = b""
        if first.startswith(b"HTTP/1.1 100"):
            conn.sendall(body)
            while b"\r\n\r\n" not in rest:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                rest += chunk
    return first, rest


def test_expect_100_continue_only_after_authentication(walrus: Walrus) -> None:
    walrus.client().create_bucket(Bucket="expect")
    body = b"continued body"
    good = signed_headers(walrus, "PUT", "/expect/obj", body)
    first, rest = _expect_exchange(walrus, good, body)
    assert first.startswith(b"HTTP/1.1 100 Continue"), first
    assert rest.startswith(b"HTTP/1.1 200") or b"HTTP/1.1 200" in first + rest
    assert walrus.client().get_object(Bucket="expect", Key="obj")["Body"].read() == body
    # a bad signature: the final answer at once, no 100 first
    bad = dict(good)
    bad["Authorization"] = re.sub(r"Signature=\w+", "Signature=" + "0" * 64, bad["Authorization"])
    first, _ = _expect_exchange(walrus, bad, b"never sent")
    assert first.startswith(b"HTTP/1.1 403"), first
    assert b"<Code>SignatureDoesNotMatch</Code>" in first
    assert walrus.client().get_object(Bucket="expect", Key="obj")["Body"].read() == body
    # boto3 sends Expect: 100-continue on uploads: they work end to end
    walrus.client().put_object(Bucket="expect", Key="boto", Body=b"b" * 2_000_000)
    assert walrus.client().head_object(Bucket="expect", Key="boto")["ContentLength"] == 2_000_000


def test_conditional_put(walrus: Walrus, tmp_path: Path) -> None:
    s3 = walrus.client()
    s3.create_bucket(Bucket="cond-put")
    first = s3.put_object(Bucket="cond-put", Key="k", Body=b"one", IfNoneMatch="*")
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket="cond-put", Key="k", Body=b"two", IfNoneMatch="*")
    assert code(err) == ("PreconditionFailed", 412)
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket="cond-put", Key="k", Body=b"two", IfMatch='"0123456789abcdef0123456789abcdef"')
    assert code(err) == ("PreconditionFailed", 412)
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket="cond-put", Key="absent", Body=b"two", IfMatch=first["ETag"])
    assert code(err) == ("NoSuchKey", 404)
    assert s3.get_object(Bucket="cond-put", Key="k")["Body"].read() == b"one"
    s3.put_object(Bucket="cond-put", Key="k", Body=b"three", IfMatch=first["ETag"])
    assert s3.get_object(Bucket="cond-put", Key="k")["Body"].read() == b"three"
    source = tmp_path / "f"
    source.write_bytes(b"cli")
    assert "PreconditionFailed" in aws_error(
        walrus, tmp_path, "s3api", "put-object", "--bucket", "cond-put", "--key", "k", "--body", str(source),
        "--if-none-match", "*",
    )  # fmt: skip
    aws_ok(walrus, tmp_path, "s3api", "put-object", "--bucket", "cond-put", "--key", "new", "--body", str(source),
           "--if-none-match", "*")  # fmt: skip


def test_presigned_expiry_errors(walrus: Walrus) -> None:
    s3 = walrus.client()
    s3.create_bucket(Bucket="presign-edges")
    s3.put_object(Bucket="presign-edges", Key="k", Body=b"v")
    params = {"Bucket": "presign-edges", "Key": "k"}
    # Long enough that the first fetches are surely inside the window, even on a loaded machine.
    v4 = s3.generate_presigned_url("get_object", Params=params, ExpiresIn=4)
    v2 = walrus.client(signature="s3").generate_presigned_url("get_object", Params=params, ExpiresIn=4)
    assert fetch(v4) == (200, b"v") and fetch(v2) == (200, b"v")
    time.sleep(5.2)
    for url in (v4, v2):
        status, body = fetch(url)
        assert status == 403 and b"<Code>AccessDenied</Code>" in body and b"Request has expired" in body
        assert b"<Expires>" in body and b"<ServerTime>" in body
    week = s3.generate_presigned_url("get_object", Params=params, ExpiresIn=604800)
    assert fetch(week) == (200, b"v")
    status, body = fetch(week.replace("X-Amz-Expires=604800", "X-Amz-Expires=604801"))
    assert status == 400 and b"<Code>AuthorizationQueryParametersError</Code>" in body
    assert b"must be less than a week" in body
    status, body = fetch(week.replace("X-Amz-Expires=604800", "X-Amz-Expires=-1"))
    assert status == 400 and b"must be non-negative" in body


def test_expected_bucket_owner(walrus: Walrus, tmp_path: Path) -> None:
    s3 = walrus.client()
    s3.create_bucket(Bucket="owner-check")
    s3.put_object(Bucket="owner-check", Key="k", Body=b"v", ExpectedBucketOwner=ALICE)
    assert s3.get_object(Bucket="owner-check", Key="k", ExpectedBucketOwner=ALICE)["Body"].read() == b"v"
    for call in (
        lambda: s3.get_object(Bucket="owner-check", Key="k", ExpectedBucketOwner="222222222222"),
        lambda: s3.list_objects_v2(Bucket="owner-check", ExpectedBucketOwner="222222222222"),
        lambda: s3.put_object(Bucket="owner-check", Key="k2", Body=b"v", ExpectedBucketOwner="222222222222"),
        lambda: s3.copy_object(
            Bucket="owner-check", Key="k3", CopySource="owner-check/k", ExpectedSourceBucketOwner="222222222222"
        ),
    ):
        with pytest.raises(ClientError) as err:
            call()
        assert code(err) == ("AccessDenied", 403)
    s3.copy_object(Bucket="owner-check", Key="k3", CopySource="owner-check/k", ExpectedSourceBucketOwner=ALICE)
    assert "(403)" in aws_error(  # HEAD: the status only
        walrus, tmp_path, "s3api", "head-bucket", "--bucket", "owner-check", "--expected-bucket-owner", "222222222222"
    )
    aws_ok(walrus, tmp_path, "s3api", "head-bucket", "--bucket", "owner-check", "--expected-bucket-owner", ALICE)


@pytest.mark.skipif(shutil.which("s3cmd") is None, reason="s3cmd is installed by deploy/bootstrap.sh")
def test_edges_with_s3cmd(walrus: Walrus, tmp_path: Path) -> None:
    config = s3cmd_config(walrus, tmp_path / "s3cfg", signature_v2=False)
    s3cmd_ok(config, "mb", "s3://edges-s3cmd")
    s3cmd_ok(config, "mb", "s3://edges-s3cmd")  # one's own bucket again: fine in us-east-1
    bob = s3cmd_config(walrus, tmp_path / "s3cfg-bob", signature_v2=True, user="bob")
    assert "BucketAlreadyExists" in s3cmd_error(bob, "mb", "s3://edges-s3cmd")
    source = tmp_path / "with space+plus.txt"
    source.write_bytes(b"s3cmd edge")
    s3cmd_ok(config, "put", str(source), "s3://edges-s3cmd/dir/with space+plus.txt")
    assert "with space+plus.txt" in s3cmd_ok(config, "ls", "--recursive", "s3://edges-s3cmd")
    # Expiry in whole seconds: long enough that the first fetch is surely inside it, even on a loaded machine.
    signed = s3cmd_ok(config, "signurl", "s3://edges-s3cmd/dir/with space+plus.txt", "+4").strip()
    assert fetch(signed) == (200, b"s3cmd edge")
    time.sleep(5.2)
    status, body = fetch(signed)
    assert status == 403 and b"Request has expired" in body
