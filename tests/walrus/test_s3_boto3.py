"""Walrus's S3 API driven by boto3 (path and virtual-host addressing, SigV4 and SigV2)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import threading
import urllib.error
import urllib.request
import zlib

import boto3
import crc32c
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.walrus.conftest import USERS, Walrus

pytestmark = pytest.mark.shared_metadata  # also on the shared store (tests/walrus/conftest.py)

MiB = 1 << 20


def error_code(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.response["Error"]["Code"]


@pytest.fixture(scope="module")
def s3(walrus: Walrus):
    client = walrus.client()
    client.create_bucket(Bucket="data")
    return client


def test_bucket_lifecycle(s3, walrus: Walrus) -> None:
    s3.create_bucket(Bucket="life-1", CreateBucketConfiguration={"LocationConstraint": "zone-a"})
    assert s3.get_bucket_location(Bucket="life-1")["LocationConstraint"] == "zone-a"
    assert "life-1" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.head_bucket(Bucket="life-1")
    with pytest.raises(ClientError) as err:
        s3.create_bucket(Bucket="life-1")
    assert error_code(err) == "BucketAlreadyOwnedByYou"
    with pytest.raises(ClientError) as err:
        walrus.client("bob").create_bucket(Bucket="life-1")
    assert error_code(err) == "BucketAlreadyExists"
    s3.put_object(Bucket="life-1", Key="x", Body=b"1")
    with pytest.raises(ClientError) as err:
        s3.delete_bucket(Bucket="life-1")
    assert error_code(err) == "BucketNotEmpty"
    s3.delete_object(Bucket="life-1", Key="x")
    s3.delete_bucket(Bucket="life-1")
    with pytest.raises(ClientError) as err:
        s3.head_bucket(Bucket="life-1")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as err:
        s3.list_objects(Bucket="life-1")
    assert error_code(err) == "NoSuchBucket"
    for bad in ("UPPER", "a", "x" * 64, "bad..dots", "192.168.1.1", "-dash", "under_score"):
        with pytest.raises(ClientError) as err:
            walrus.client().create_bucket(Bucket=bad)
        assert error_code(err) == "InvalidBucketName", bad


def test_put_get_round_trip_with_metadata(s3) -> None:
    body = os.urandom(300_000)
    put = s3.put_object(
        Bucket="data",
        Key="dir/blob.bin",
        Body=body,
        ContentType="application/x-test",
        Metadata={"color": "blue"},
        CacheControl="max-age=60",
        ContentDisposition="attachment",
    )
    assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    got = s3.get_object(Bucket="data", Key="dir/blob.bin")
    assert got["Body"].read() == body
    assert got["ETag"] == put["ETag"]
    assert got["ContentType"] == "application/x-test"
    assert got["Metadata"] == {"color": "blue"}
    assert got["CacheControl"] == "max-age=60"
    assert got["ContentDisposition"] == "attachment"
    head = s3.head_object(Bucket="data", Key="dir/blob.bin")
    assert head["ContentLength"] == len(body)
    # Overrides of response headers.
    over = s3.get_object(Bucket="data", Key="dir/blob.bin", ResponseContentType="text/plain")
    assert over["ContentType"] == "text/plain"
    # Small and empty objects.
    s3.put_object(Bucket="data", Key="empty", Body=b"")
    assert s3.get_object(Bucket="data", Key="empty")["Body"].read() == b""
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="data", Key="missing")
    assert error_code(err) == "NoSuchKey"


def test_ranges_and_conditions(s3) -> None:
    body = bytes(range(256)) * 400  # 102400 bytes: streamed (not from the small-object path)
    etag = s3.put_object(Bucket="data", Key="ranged", Body=body)["ETag"]
    part = s3.get_object(Bucket="data", Key="ranged", Range="bytes=100-199")
    assert part["Body"].read() == body[100:200]
    assert part["ContentRange"] == f"bytes 100-199/{len(body)}"
    assert s3.get_object(Bucket="data", Key="ranged", Range="bytes=-10")["Body"].read() == body[-10:]
    assert s3.get_object(Bucket="data", Key="ranged", Range="bytes=102000-")["Body"].read() == body[102000:]
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="data", Key="ranged", Range="bytes=999999-")
    assert error_code(err) == "InvalidRange"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416
    assert s3.get_object(Bucket="data", Key="ranged", IfMatch=etag)["Body"].read() == body
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="data", Key="ranged", IfMatch='"0000"')
    assert error_code(err) == "PreconditionFailed"
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="data", Key="ranged", IfNoneMatch=etag)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="data", Key="ranged", IfModifiedSince=future)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="data", Key="ranged", IfUnmodifiedSince=past)
    assert error_code(err) == "PreconditionFailed"
    assert s3.get_object(Bucket="data", Key="ranged", IfModifiedSince=past)["ContentLength"] == len(body)


def test_checksums_are_verified_stored_and_returned(s3, walrus: Walrus) -> None:
    body = os.urandom(70_000)
    expected = {
        "CRC32": base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode(),
        "CRC32C": base64.b64encode(crc32c.crc32c(body).to_bytes(4, "big")).decode(),
        "SHA1": base64.b64encode(hashlib.sha1(body).digest()).decode(),
        "SHA256": base64.b64encode(hashlib.sha256(body).digest()).decode(),
    }
    for algorithm, value in expected.items():
        # botocore computes CRC32C only with awscrt; the value is then given by the caller, as S3 allows
        given = {f"Checksum{algorithm}": value} if algorithm == "CRC32C" else {"ChecksumAlgorithm": algorithm}
        put = s3.put_object(Bucket="data", Key=f"sum-{algorithm}", Body=body, **given)
        assert put[f"Checksum{algorithm}"] == value
        head = s3.head_object(Bucket="data", Key=f"sum-{algorithm}", ChecksumMode="ENABLED")
        assert head[f"Checksum{algorithm}"] == value
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket="data", Key="bad-sum", Body=body, ChecksumSHA256=expected["SHA1"][:-4] + "AAA=")
    assert error_code(err) in ("BadDigest", "InvalidRequest")
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket="data", Key="bad-md5", Body=body, ContentMD5=base64.b64encode(b"0" * 16).decode())
    assert error_code(err) == "BadDigest"
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket="data", Key="bad-md5", Body=body, ContentMD5="not-base64!")
    assert error_code(err) == "InvalidDigest"
    with pytest.raises(ClientError):
        s3.head_object(Bucket="data", Key="bad-md5")


def test_unsigned_payload_trailer_as_botocore_sends_it_over_https(walrus: Walrus) -> None:
    """botocore's own aws-chunked encoder with a trailing CRC32 (what it does over TLS)."""
    client = walrus.client()

    def use_trailer(params, **_) -> None:
        algorithm = params["context"].get("checksum", {}).get("request_algorithm")
        if isinstance(algorithm, dict):
            algorithm["in"] = "trailer"

    client.meta.events.register("before-call.s3.PutObject", use_trailer)
    body = os.urandom(200_000)
    put = client.put_object(Bucket="data", Key="trailer", Body=body, ChecksumAlgorithm="CRC32")
    assert put["ChecksumCRC32"] == base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
    got = walrus.client().get_object(Bucket="data", Key="trailer")
    assert got["Body"].read() == body
    assert "ContentEncoding" not in got  # aws-chunked was the upload's encoding, not the object's


def test_unsigned_payload_and_sigv2(walrus: Walrus) -> None:
    unsigned = walrus.client(s3={"payload_signing_enabled": False}) if False else walrus.client()
    unsigned.meta.events.register(
        "before-sign.s3.PutObject", lambda request, **_: request.context.__setitem__("payload_signing_enabled", False)
    )
    unsigned.put_object(Bucket="data", Key="unsigned", Body=b"u" * 1000)
    v2 = walrus.client(signature="s3")
    v2.put_object(Bucket="data", Key="v2 key+plus", Body=b"v2 body", Metadata={"m": "1"})
    assert v2.get_object(Bucket="data", Key="v2 key+plus")["Body"].read() == b"v2 body"
    assert walrus.client().get_object(Bucket="data", Key="unsigned")["Body"].read() == b"u" * 1000
    bad = boto3.client(
        "s3",
        endpoint_url=walrus.url,
        aws_access_key_id=USERS["alice"][0],
        aws_secret_access_key="wrong",
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
    )
    with pytest.raises(ClientError) as err:
        bad.list_objects(Bucket="data")
    assert error_code(err) == "SignatureDoesNotMatch"
    assert "AWS4-HMAC-SHA256" in err.value.response["Error"]["StringToSign"]
    unknown = boto3.client(
        "s3",
        endpoint_url=walrus.url,
        aws_access_key_id="AKIANOBODY",
        aws_secret_access_key="x",
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}),
    )
    with pytest.raises(ClientError) as err:
        unknown.list_buckets()
    # A key not in the local file is asked of the CLC, which this module does not run: Walrus cannot tell.
    assert error_code(err) == "ServiceUnavailable"


def test_presigned_urls_v4_and_v2(s3, walrus: Walrus) -> None:
    s3.put_object(Bucket="data", Key="shared/file", Body=b"presigned body")
    for client in (walrus.client(), walrus.client(signature="s3")):
        url = client.generate_presigned_url("get_object", Params={"Bucket": "data", "Key": "shared/file"})
        with urllib.request.urlopen(url) as response:
            assert response.read() == b"presigned body"
        tampered = url.replace("shared/file", "shared/other")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(tampered)
        assert err.value.code == 403
        assert b"SignatureDoesNotMatch" in err.value.read()
    expired = walrus.client(signature="s3").generate_presigned_url(
        "get_object", Params={"Bucket": "data", "Key": "shared/file"}, ExpiresIn=-10
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(expired)
    assert err.value.code == 403 and b"Request has expired" in err.value.read()
    negative = walrus.client().generate_presigned_url(
        "get_object", Params={"Bucket": "data", "Key": "shared/file"}, ExpiresIn=-10
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(negative)
    assert err.value.code == 400 and b"AuthorizationQueryParametersError" in err.value.read()
    put_url = walrus.client().generate_presigned_url("put_object", Params={"Bucket": "data", "Key": "via-url"})
    request = urllib.request.Request(put_url, data=b"uploaded", method="PUT")
    with urllib.request.urlopen(request) as response:
        assert response.status == 200
    assert s3.get_object(Bucket="data", Key="via-url")["Body"].read() == b"uploaded"


def test_listing_v1_v2_versions(s3) -> None:
    s3.create_bucket(Bucket="listing")
    keys = [f"a/{i:03d}" for i in range(25)] + ["b/x", "b/y/z", "c", "d e+f"]
    for key in keys:
        s3.put_object(Bucket="listing", Key=key, Body=key.encode())
    everything = []
    token = {}
    while True:
        page = s3.list_objects_v2(Bucket="listing", MaxKeys=7, **token)
        everything += [o["Key"] for o in page.get("Contents", [])]
        if not page["IsTruncated"]:
            break
        token = {"ContinuationToken": page["NextContinuationToken"]}
    assert everything == sorted(keys)
    top = s3.list_objects_v2(Bucket="listing", Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["a/", "b/"]
    assert [o["Key"] for o in top["Contents"]] == ["c", "d e+f"]
    assert "Owner" not in top["Contents"][0]
    assert "Owner" in s3.list_objects_v2(Bucket="listing", FetchOwner=True)["Contents"][0]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="listing", StartAfter="b/y/z")["Contents"]] == ["c", "d e+f"]
    # v1 with marker and delimiter paging through common prefixes
    seen, marker = [], ""
    while True:
        page = s3.list_objects(Bucket="listing", Delimiter="/", MaxKeys=1, Marker=marker)
        seen += [p["Prefix"] for p in page.get("CommonPrefixes", [])] + [o["Key"] for o in page.get("Contents", [])]
        if not page["IsTruncated"]:
            break
        marker = page["NextMarker"]
    assert seen == ["a/", "b/", "c", "d e+f"]
    sub = s3.list_objects(Bucket="listing", Prefix="b/", Delimiter="/", EncodingType="url")
    assert [o["Key"] for o in sub["Contents"]] == ["b/x"]
    assert [p["Prefix"] for p in sub["CommonPrefixes"]] == ["b/y/"]
    versions = s3.list_object_versions(Bucket="listing", Prefix="a/")
    assert len(versions["Versions"]) == 25
    assert all(v["VersionId"] == "null" and v["IsLatest"] for v in versions["Versions"])
    # clean up the way tools do, with DeleteObjects
    deleted = s3.delete_objects(Bucket="listing", Delete={"Objects": [{"Key": k} for k in keys]})
    assert len(deleted["Deleted"]) == len(keys)
    quiet = s3.delete_objects(Bucket="listing", Delete={"Objects": [{"Key": "c"}], "Quiet": True})
    assert "Deleted" not in quiet
    s3.delete_bucket(Bucket="listing")


def test_copy_object(s3) -> None:
    body = os.urandom(100_000)
    etag = s3.put_object(Bucket="data", Key="orig", Body=body, Metadata={"k": "v"}, ContentType="a/b")["ETag"]
    s3.copy_object(Bucket="data", Key="copy", CopySource={"Bucket": "data", "Key": "orig"})
    copied = s3.get_object(Bucket="data", Key="copy")
    assert copied["Body"].read() == body and copied["Metadata"] == {"k": "v"} and copied["ETag"] == etag
    s3.copy_object(
        Bucket="data",
        Key="copy2",
        CopySource="data/orig",
        MetadataDirective="REPLACE",
        Metadata={"new": "1"},
        ContentType="c/d",
    )
    replaced = s3.head_object(Bucket="data", Key="copy2")
    assert replaced["Metadata"] == {"new": "1"} and replaced["ContentType"] == "c/d"
    with pytest.raises(ClientError) as err:
        s3.copy_object(Bucket="data", Key="copy3", CopySource="data/orig", CopySourceIfMatch='"nope"')
    assert error_code(err) == "PreconditionFailed"
    with pytest.raises(ClientError) as err:
        s3.copy_object(Bucket="data", Key="orig", CopySource="data/orig")
    assert error_code(err) == "InvalidRequest"
    # Overwriting the source leaves the copy intact (data files are never shared mutably).
    s3.put_object(Bucket="data", Key="orig", Body=b"new")
    assert s3.get_object(Bucket="data", Key="copy")["Body"].read() == body


def test_multipart_upload(s3) -> None:
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB + 17), os.urandom(1234)]
    upload = s3.create_multipart_upload(Bucket="data", Key="multi", Metadata={"mp": "yes"})["UploadId"]
    listed = s3.list_multipart_uploads(Bucket="data")
    assert upload in [u["UploadId"] for u in listed.get("Uploads", [])]
    etags = []
    for number, part in enumerate(parts, start=1):
        etags.append(s3.upload_part(Bucket="data", Key="multi", UploadId=upload, PartNumber=number, Body=part)["ETag"])
    assert [p["Size"] for p in s3.list_parts(Bucket="data", Key="multi", UploadId=upload)["Parts"]] == [
        len(p) for p in parts
    ]
    with pytest.raises(ClientError) as err:
        s3.complete_multipart_upload(
            Bucket="data",
            Key="multi",
            UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": 2, "ETag": etags[1]}, {"PartNumber": 1, "ETag": etags[0]}]},
        )
    assert error_code(err) == "InvalidPartOrder"
    with pytest.raises(ClientError) as err:
        s3.complete_multipart_upload(
            Bucket="data", Key="multi", UploadId=upload, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"00"'}]}
        )
    assert error_code(err) == "InvalidPart"
    done = s3.complete_multipart_upload(
        Bucket="data",
        Key="multi",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]},
    )
    expected = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + "-3"
    assert done["ETag"] == f'"{expected}"'
    got = s3.get_object(Bucket="data", Key="multi")
    assert got["Body"].read() == b"".join(parts) and got["Metadata"] == {"mp": "yes"}
    assert s3.get_object(Bucket="data", Key="multi", PartNumber=2)["Body"].read() == parts[1]
    span = s3.get_object(Bucket="data", Key="multi", Range=f"bytes={5 * MiB - 5}-{5 * MiB + 4}")["Body"].read()
    assert span == (parts[0] + parts[1])[5 * MiB - 5 : 5 * MiB + 5]
    with pytest.raises(ClientError) as err:
        s3.upload_part(Bucket="data", Key="multi", UploadId=upload, PartNumber=1, Body=b"x")
    assert error_code(err) == "NoSuchUpload"
    # too-small parts, UploadPartCopy and abort
    small = s3.create_multipart_upload(Bucket="data", Key="small")["UploadId"]
    e1 = s3.upload_part(Bucket="data", Key="small", UploadId=small, PartNumber=1, Body=b"a" * 100)["ETag"]
    e2 = s3.upload_part_copy(
        Bucket="data", Key="small", UploadId=small, PartNumber=2, CopySource="data/multi", CopySourceRange="bytes=0-99"
    )["CopyPartResult"]["ETag"]
    with pytest.raises(ClientError) as err:
        s3.complete_multipart_upload(
            Bucket="data",
            Key="small",
            UploadId=small,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]},
        )
    assert error_code(err) == "EntityTooSmall"
    s3.abort_multipart_upload(Bucket="data", Key="small", UploadId=small)
    with pytest.raises(ClientError) as err:
        s3.list_parts(Bucket="data", Key="small", UploadId=small)
    assert error_code(err) == "NoSuchUpload"


def test_virtual_host_addressing(walrus: Walrus) -> None:
    """Host: <bucket>.localhost:<port>. Names under localhost do not resolve here, so the client reaches Walrus
    as its HTTP proxy: the request still carries the virtual-host Host header and path."""
    port = walrus.url.rsplit(":", 1)[1]
    access, secret, _, _ = USERS["alice"]
    client = boto3.client(
        "s3",
        endpoint_url=f"http://localhost:{port}",
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "virtual"}, proxies={"http": walrus.url}, retries={"max_attempts": 1}),
    )
    seen = []
    client.meta.events.register("before-send.s3", lambda request, **_: seen.append(request.url))
    client.create_bucket(Bucket="vhost-bucket")
    client.put_object(Bucket="vhost-bucket", Key="dir/k", Body=b"virtual")
    assert client.get_object(Bucket="vhost-bucket", Key="dir/k")["Body"].read() == b"virtual"
    assert [o["Key"] for o in client.list_objects_v2(Bucket="vhost-bucket")["Contents"]] == ["dir/k"]
    assert seen[0].startswith(f"http://vhost-bucket.localhost:{port}/")
    # the same object, path style
    assert walrus.client().get_object(Bucket="vhost-bucket", Key="dir/k")["Body"].read() == b"virtual"


def test_walrus_path_prefix(walrus: Walrus) -> None:
    access, secret, _, _ = USERS["alice"]
    for signature in ("s3v4", "s3"):
        client = boto3.client(
            "s3",
            endpoint_url=walrus.url + "/services/Walrus",
            aws_access_key_id=access,
            aws_secret_access_key=secret,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, signature_version=signature),
        )
        client.put_object(Bucket="data", Key=f"prefixed-{signature}", Body=b"p")
        assert client.get_object(Bucket="data", Key=f"prefixed-{signature}")["Body"].read() == b"p"


def test_acl_get_put(s3, walrus: Walrus) -> None:
    s3.put_object(Bucket="data", Key="acl-obj", Body=b"a")
    acl = s3.get_object_acl(Bucket="data", Key="acl-obj")
    assert acl["Owner"]["ID"] == USERS["alice"][2]
    assert [g["Permission"] for g in acl["Grants"]] == ["FULL_CONTROL"]
    bob_id = USERS["bob"][2]
    s3.put_object_acl(
        Bucket="data",
        Key="acl-obj",
        AccessControlPolicy={
            "Owner": acl["Owner"],
            "Grants": [
                {"Grantee": {"Type": "CanonicalUser", "ID": USERS["alice"][2]}, "Permission": "FULL_CONTROL"},
                {"Grantee": {"Type": "CanonicalUser", "ID": bob_id}, "Permission": "READ"},
            ],
        },
    )
    assert walrus.client("bob").get_object(Bucket="data", Key="acl-obj")["Body"].read() == b"a"
    s3.put_object_acl(Bucket="data", Key="acl-obj", ACL="private")
    with pytest.raises(ClientError):
        walrus.client("bob").get_object(Bucket="data", Key="acl-obj")
    s3.put_object_acl(Bucket="data", Key="acl-obj", GrantRead=f'id="{bob_id}"')
    assert walrus.client("bob").get_object(Bucket="data", Key="acl-obj")["Body"].read() == b"a"
    bucket_acl = s3.get_bucket_acl(Bucket="data")
    assert bucket_acl["Grants"][0]["Grantee"]["ID"] == USERS["alice"][2]
    s3.put_bucket_acl(Bucket="data", ACL="private")


def test_concurrent_overwrites_read_whole_versions(walrus: Walrus, s3) -> None:
    """Writers keep replacing one key while readers read it: every read is one whole version."""
    versions = [bytes([i]) * (300_000 + 1000 * i) for i in range(6)]
    digests = {hashlib.md5(v).hexdigest() for v in versions}
    s3.put_object(Bucket="data", Key="hot", Body=versions[0])
    seen: list[str] = []
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        client = walrus.client()
        for _ in range(4):
            client.put_object(Bucket="data", Key="hot", Body=versions[index])

    def reader() -> None:
        client = walrus.client()
        try:
            for _ in range(12):
                seen.append(hashlib.md5(client.get_object(Bucket="data", Key="hot")["Body"].read()).hexdigest())
        except BaseException as err:  # reported below, in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(len(versions))]
    threads += [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(seen) == 36 and set(seen) <= digests
