"""Bad input gets the right S3 error and the service stays up: malformed XML, an XML bomb, huge headers, bad
ranges, invalid names, truncated bodies, wrong Content-Length, odd keys; signed aws-chunked bodies and clock
skew. Requests are signed with botocore's own SigV4 signer and sent raw where a normal client would refuse."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import socket
import time
import urllib.request
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from common.sigv4 import signing_key
from services.walrus.s3.auth import chunk_signature
from services.walrus.s3.context import ChunkSigning
from services.walrus.storage.blobs import is_data_id
from tests.walrus.conftest import USERS, Walrus
from tests.walrus.stores import process_data_names


def signed_headers(
    walrus: Walrus, method: str, path: str, body: bytes = b"", headers: dict | None = None, unsigned: bool = False
) -> dict[str, str]:
    access, secret, _, _ = USERS["alice"]
    request = AWSRequest(method=method, url=walrus.url + path, data=body, headers=headers or {})
    if unsigned:
        request.context["payload_signing_enabled"] = False
    botocore.auth.S3SigV4Auth(Credentials(access, secret), "s3", "us-east-1").add_auth(request)
    return dict(request.headers.items())


def raw_request(walrus: Walrus, head: bytes, body: bytes = b"", shutdown: bool = False) -> tuple[int, bytes]:
    """Send bytes as they are; return the status and the whole answer."""
    host, port = urlsplit(walrus.url).hostname, urlsplit(walrus.url).port
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(head + body)
        if shutdown:
            conn.shutdown(socket.SHUT_WR)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        header, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in header.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            rest += chunk
    status = int(header.split(b" ", 2)[1]) if header else 0
    return status, rest


def send(
    walrus: Walrus, method: str, path: str, headers: dict[str, str], body: bytes = b"", close: bool = True, **kw
) -> tuple[int, bytes]:
    host = urlsplit(walrus.url).netloc
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"] + (["Connection: close"] if close else [])
    lines += [f"{name}: {value}" for name, value in headers.items() if name.lower() != "host"]
    if "Content-Length" not in headers and (body or method in ("PUT", "POST")):
        lines.append(f"Content-Length: {len(body)}")
    return raw_request(walrus, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), body, **kw)


def signed(walrus: Walrus, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, bytes]:
    return send(walrus, method, path, signed_headers(walrus, method, path, body, headers), body)


@pytest.fixture(scope="module")
def bucket(walrus: Walrus) -> str:
    walrus.client().create_bucket(Bucket="bad")
    walrus.client().put_object(Bucket="bad", Key="obj", Body=b"0123456789")
    return "bad"


def assert_error(answer: tuple[int, bytes], status: int, code: str) -> None:
    assert answer[0] == status, answer
    assert f"<Code>{code}</Code>".encode() in answer[1], answer
    assert b"<RequestId>" in answer[1] and b"<Resource>" in answer[1]


def test_malformed_xml_and_bomb(walrus: Walrus, bucket: str) -> None:
    assert_error(signed(walrus, "POST", "/bad?delete", b"<Delete><Object><Key>x</Key>"), 400, "MalformedXML")
    assert_error(signed(walrus, "POST", "/bad?delete", b"<Nope/>"), 400, "MalformedXML")
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">'
        b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;">]><Delete><Object><Key>&lol3;</Key></Object></Delete>'
    )
    assert_error(signed(walrus, "POST", "/bad?delete", bomb), 400, "MalformedXML")
    assert_error(
        signed(walrus, "PUT", "/bad/obj?acl", bomb.replace(b"Delete", b"AccessControlPolicy")), 400, "MalformedACLError"
    )
    external = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><Delete>&e;</Delete>'
    assert_error(signed(walrus, "POST", "/bad?delete", external), 400, "MalformedXML")
    huge = b"<Delete>" + b"<Object><Key>k</Key></Object>" * 50_000 + b"</Delete>"
    assert_error(signed(walrus, "POST", "/bad?delete", huge), 400, "MaxMessageLengthExceeded")
    upload = walrus.client().create_multipart_upload(Bucket="bad", Key="mp")["UploadId"]
    assert_error(signed(walrus, "POST", f"/bad/mp?uploadId={upload}", b"<Complete"), 400, "MalformedXML")
    assert_error(
        signed(walrus, "POST", f"/bad/mp?uploadId={upload}", b"<CompleteMultipartUpload></CompleteMultipartUpload>"),
        400,
        "MalformedXML",
    )
    assert_error(signed(walrus, "PUT", "/new-bucket-x", b"<CreateBucketConfiguration>"), 400, "MalformedXML")


def test_huge_headers(walrus: Walrus, bucket: str) -> None:
    headers = signed_headers(walrus, "GET", "/bad/obj")
    headers["X-Padding"] = "p" * 100_000
    assert_error(send(walrus, "GET", "/bad/obj", headers), 400, "RequestHeaderSectionTooLarge")
    many = {f"X-Many-{i}": "v" * 100 for i in range(200)}
    assert_error(signed(walrus, "GET", "/bad/obj", headers=many), 400, "RequestHeaderSectionTooLarge")
    meta = {"x-amz-meta-big": "m" * 3000}
    assert_error(signed(walrus, "PUT", "/bad/meta", b"x", meta), 400, "MetadataTooLarge")


def test_bad_ranges(walrus: Walrus, bucket: str) -> None:
    s3 = walrus.client()
    assert s3.get_object(Bucket="bad", Key="obj", Range="bytes=abc")["Body"].read() == b"0123456789"
    assert s3.get_object(Bucket="bad", Key="obj", Range="bytes=5-2")["Body"].read() == b"0123456789"
    assert s3.get_object(Bucket="bad", Key="obj", Range="bytes=8-100")["Body"].read() == b"89"
    assert_error(signed(walrus, "GET", "/bad/obj", headers={"Range": "bytes=10-"}), 416, "InvalidRange")
    assert_error(signed(walrus, "GET", "/bad/obj", headers={"Range": "bytes=-0"}), 416, "InvalidRange")
    assert_error(signed(walrus, "GET", "/bad/obj?partNumber=2"), 416, "InvalidPartNumber")
    assert_error(signed(walrus, "GET", "/bad/obj?partNumber=x"), 400, "InvalidArgument")


def test_invalid_names_and_keys(walrus: Walrus, bucket: str) -> None:
    s3 = walrus.client()
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket="bad", Key="k" * 1025, Body=b"x")
    assert err.value.response["Error"]["Code"] == "KeyTooLongError"
    assert_error(signed(walrus, "PUT", "/bad/a%00b", b"x"), 400, "InvalidArgument")
    assert_error(signed(walrus, "PUT", "/bad/%ff%fe", b"x"), 400, "InvalidURI")
    assert_error(signed(walrus, "GET", "/Bad_Bucket/x"), 400, "InvalidBucketName")
    assert_error(signed(walrus, "GET", "/nosuchbucket/x"), 404, "NoSuchBucket")
    # ../ in a key is just a key: stored and read back by name, never a path on disk
    assert signed(walrus, "PUT", "/bad/../escape", b"dots" * 10000)[0] == 200  # big enough for a data file
    assert signed(walrus, "PUT", "/bad/%2e%2e/%2e%2e/escape2", b"encoded dots")[0] == 200
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="bad")["Contents"]]
    assert "../escape" in keys and "../../escape2" in keys
    assert s3.get_object(Bucket="bad", Key="../../escape2")["Body"].read() == b"encoded dots"
    state = walrus.cloud.dir
    assert not list(state.rglob("escape*")), "a key became a file name"
    names = process_data_names(walrus.storage, state / "data" / "walrus" / "objects")
    assert names and all(is_data_id(name.split(".")[0]) for name in names)
    assert_error(signed(walrus, "PATCH", "/bad/obj", b""), 405, "MethodNotAllowed")
    assert_error(signed(walrus, "GET", "/bad?website"), 501, "NotImplemented")


def test_truncated_body_and_wrong_length(walrus: Walrus, bucket: str) -> None:
    headers = signed_headers(walrus, "PUT", "/bad/truncated", b"", unsigned=True)
    headers["Content-Length"] = "100000"
    status, answer = send(walrus, "PUT", "/bad/truncated", headers, b"x" * 5000, shutdown=True)
    assert status in (0, 400), answer  # the client went away; Walrus may not get to answer
    # a body longer than its Content-Length, with a signed payload hash: the digest of what the length covers
    # does not match (aiohttp may answer the bytes after it as a bad next request first)
    body = b"y" * 2000
    headers = signed_headers(walrus, "PUT", "/bad/short", body)
    headers["Content-Length"] = "1000"
    status, answer = send(walrus, "PUT", "/bad/short", headers, body, close=False)
    assert status == 400 and (b"XAmzContentSHA256Mismatch" in answer or b"Invalid method" in answer), answer
    status, answer = send(walrus, "PUT", "/bad/short", headers, body[:1000])
    assert_error((status, answer), 400, "XAmzContentSHA256Mismatch")
    # a Content-Length the body does not reach
    headers = signed_headers(walrus, "PUT", "/bad/short", body)
    headers["Content-Length"] = "3000"
    status, answer = send(walrus, "PUT", "/bad/short", headers, body, shutdown=True)
    assert status in (0, 400), answer
    # Content-MD5 of other bytes
    assert_error(
        signed(walrus, "PUT", "/bad/md5", b"abc", {"Content-MD5": "AAAAAAAAAAAAAAAAAAAAAA=="}), 400, "BadDigest"
    )
    s3 = walrus.client()
    for key in ("truncated", "short", "md5"):
        with pytest.raises(ClientError) as err:
            s3.head_object(Bucket="bad", Key=key)
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with urllib.request.urlopen(walrus.url + "/healthz") as response:
        assert response.status == 200


def test_aws_chunk_signature_vectors() -> None:
    """The chunk signatures of AWS's documented STREAMING-AWS4-HMAC-SHA256-PAYLOAD example."""
    key = signing_key("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "20130524", "us-east-1", "s3")
    signing = ChunkSigning(
        key,
        "20130524/us-east-1/s3/aws4_request",
        "20130524T000000Z",
        "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
    )
    first = chunk_signature(signing, signing.seed_signature, hashlib.sha256(b"a" * 65536).hexdigest())
    assert first == "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
    second = chunk_signature(signing, first, hashlib.sha256(b"a" * 1024).hexdigest())
    assert second == "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"
    final = chunk_signature(signing, second, hashlib.sha256(b"").hexdigest())
    assert final == "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"


def _chunked_put(walrus: Walrus, path: str, data: bytes, tamper: bool = False) -> tuple[int, bytes]:
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)] + [b""]
    encoded_length = sum(len(f"{len(c):x};chunk-signature={'0' * 64}\r\n") + len(c) + 2 for c in chunks)
    extra = {
        "Content-Encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(len(data)),
        "X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "Content-Length": str(encoded_length),
    }
    access, secret, _, _ = USERS["alice"]
    request = AWSRequest(method="PUT", url=walrus.url + path, headers=extra)
    auth = botocore.auth.S3SigV4Auth(Credentials(access, secret), "s3", "us-east-1")
    auth.payload = lambda request: "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"  # type: ignore[method-assign]
    auth.add_auth(request)
    headers = dict(request.headers.items())
    seed = headers["Authorization"].rsplit("Signature=", 1)[1]
    amz_date = headers["X-Amz-Date"]
    signing = ChunkSigning(
        signing_key(secret, amz_date[:8], "us-east-1", "s3"),
        f"{amz_date[:8]}/us-east-1/s3/aws4_request",
        amz_date,
        seed,
    )
    body, previous = b"", seed
    for chunk in chunks:
        signature = chunk_signature(signing, previous, hashlib.sha256(chunk).hexdigest())
        previous = signature
        payload = chunk[:-1] + b"!" if tamper and chunk else chunk
        body += f"{len(chunk):x};chunk-signature={signature}\r\n".encode() + payload + b"\r\n"
    return send(walrus, "PUT", path, headers, body)


def test_signed_chunked_upload(walrus: Walrus, bucket: str) -> None:
    data = bytes(range(256)) * 1000
    status, answer = _chunked_put(walrus, "/bad/chunked", data)
    assert status == 200, answer
    assert walrus.client().get_object(Bucket="bad", Key="chunked")["Body"].read() == data
    assert_error(_chunked_put(walrus, "/bad/chunked-bad", data, tamper=True), 403, "SignatureDoesNotMatch")
    with pytest.raises(ClientError):
        walrus.client().head_object(Bucket="bad", Key="chunked-bad")


def test_request_time_too_skewed(walrus: Walrus, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: dt.datetime.utcnow() - dt.timedelta(hours=1))
    with pytest.raises(ClientError) as err:
        walrus.client().get_object(Bucket="bad", Key="obj")
    assert err.value.response["Error"]["Code"] == "RequestTimeTooSkewed"


def test_quota_and_size_limits(tmp_path: Path) -> None:
    from tests.walrus.conftest import start_walrus

    small = start_walrus(
        tmp_path,
        {"KOALA_WALRUS_BUCKET_QUOTA": 1000, "KOALA_WALRUS_MAX_OBJECT_SIZE": 600, "KOALA_WALRUS_KEY_CACHE_SECONDS": 0.2},
    )
    try:
        s3 = small.client()
        s3.create_bucket(Bucket="quota")
        s3.put_object(Bucket="quota", Key="a", Body=b"a" * 500)
        with pytest.raises(ClientError) as err:
            s3.put_object(Bucket="quota", Key="b", Body=b"b" * 600)
        assert err.value.response["Error"]["Code"] == "QuotaExceeded"
        with pytest.raises(ClientError) as err:
            s3.put_object(Bucket="quota", Key="c", Body=b"c" * 601)
        assert err.value.response["Error"]["Code"] == "EntityTooLarge"
        s3.put_object(Bucket="quota", Key="a", Body=b"a" * 600)  # replacing counts only the growth
        # a disabled key stops working once its cached answer expires
        data = json.loads(small.credentials.read_text())
        data[USERS["alice"][0]]["principal"]["enabled"] = False
        small.credentials.write_text(json.dumps(data))
        deadline = time.monotonic() + 10
        code = ""
        while time.monotonic() < deadline:
            try:
                s3.list_buckets()
            except ClientError as err:
                code = err.response["Error"]["Code"]
                break
            time.sleep(0.05)
        assert code == "InvalidAccessKeyId"
    finally:
        small.cloud.stop()


def _trailer_put(walrus: Walrus, path: str, data: bytes, checksum: str) -> tuple[int, bytes]:
    body = f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n" + f"x-amz-checksum-crc32:{checksum}\r\n\r\n".encode()
    extra = {
        "Content-Encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(len(data)),
        "x-amz-trailer": "x-amz-checksum-crc32",
        "Content-Length": str(len(body)),
    }
    access, secret, _, _ = USERS["alice"]
    request = AWSRequest(method="PUT", url=walrus.url + path, headers=extra)
    auth = botocore.auth.S3SigV4Auth(Credentials(access, secret), "s3", "us-east-1")
    auth.payload = lambda request: "STREAMING-UNSIGNED-PAYLOAD-TRAILER"  # type: ignore[method-assign]
    auth.add_auth(request)
    return send(walrus, "PUT", path, dict(request.headers.items()), body)


def test_unsigned_trailer_checksum_is_verified(walrus: Walrus, bucket: str) -> None:
    data = b"trailing checksum body"
    good = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    assert _trailer_put(walrus, "/bad/trailer-ok", data, good)[0] == 200
    assert walrus.client().get_object(Bucket="bad", Key="trailer-ok")["Body"].read() == data
    assert_error(_trailer_put(walrus, "/bad/trailer-bad", data, "AAAAAA=="), 400, "BadDigest")
    with pytest.raises(ClientError):
        walrus.client().head_object(Bucket="bad", Key="trailer-bad")
