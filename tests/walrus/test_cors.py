"""CORS: Put/Get/DeleteBucketCors through boto3, awscli and s3cmd, preflights (OPTIONS) and the CORS headers on
answers, with S3's errors."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.walrus.cli import aws_error, aws_ok, s3cmd_config, s3cmd_error, s3cmd_ok
from tests.walrus.conftest import Walrus

RULES = {
    "CORSRules": [
        {
            "ID": "app",
            "AllowedOrigins": ["http://app.example"],
            "AllowedMethods": ["GET", "PUT"],
            "AllowedHeaders": ["content-type", "x-amz-*"],
            "ExposeHeaders": ["ETag", "x-amz-request-id"],
            "MaxAgeSeconds": 600,
        },
        {"AllowedOrigins": ["https://*.example.org"], "AllowedMethods": ["GET"]},
        {"AllowedOrigins": ["*"], "AllowedMethods": ["HEAD"]},
    ]
}


def request(walrus: Walrus, method: str, path: str, headers: dict) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(walrus.url + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def code(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.response["Error"]["Code"]


def test_cors_configuration_and_preflight(walrus: Walrus) -> None:
    s3, bob = walrus.client(), walrus.client("bob")
    s3.create_bucket(Bucket="cors")
    s3.put_object(Bucket="cors", Key="page.txt", Body=b"hello", ACL="public-read")
    with pytest.raises(ClientError) as err:
        s3.get_bucket_cors(Bucket="cors")
    assert code(err) == "NoSuchCORSConfiguration" and err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "PUT"}
    status, _, body = request(walrus, "OPTIONS", "/cors/page.txt", preflight)
    assert status == 403 and b"<Code>AccessForbidden</Code>" in body and b"not enabled" in body

    s3.put_bucket_cors(Bucket="cors", CORSConfiguration=RULES)
    got = s3.get_bucket_cors(Bucket="cors")["CORSRules"]
    assert (
        got[0]["ID"] == "app"
        and got[0]["MaxAgeSeconds"] == 600
        and got[0]["ExposeHeaders"] == ["ETag", "x-amz-request-id"]
    )
    assert [r["AllowedOrigins"] for r in got] == [["http://app.example"], ["https://*.example.org"], ["*"]]

    # a preflight that a rule allows, with its request headers
    status, headers, _ = request(
        walrus, "OPTIONS", "/cors/page.txt", {**preflight, "Access-Control-Request-Headers": "Content-Type, X-Amz-Date"}
    )
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "http://app.example"
    assert headers["Access-Control-Allow-Methods"] == "GET, PUT"
    assert headers["Access-Control-Allow-Headers"] == "content-type, x-amz-date"
    assert headers["Access-Control-Max-Age"] == "600"
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert headers["Access-Control-Expose-Headers"] == "ETag, x-amz-request-id"
    # a wildcard origin rule
    status, headers, _ = request(
        walrus, "OPTIONS", "/cors/x", {"Origin": "https://a.example.org", "Access-Control-Request-Method": "GET"}
    )
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://a.example.org"
    status, headers, _ = request(
        walrus, "OPTIONS", "/cors/x", {"Origin": "http://any", "Access-Control-Request-Method": "HEAD"}
    )
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in headers
    # preflights no rule allows, and malformed ones
    for wrong in (
        {"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"},
        {"Origin": "http://app.example", "Access-Control-Request-Method": "DELETE"},
        {**preflight, "Access-Control-Request-Headers": "x-custom"},
        {"Origin": "http://a.example.org", "Access-Control-Request-Method": "GET"},  # http, not https
    ):
        status, _, body = request(walrus, "OPTIONS", "/cors/page.txt", wrong)
        assert status == 403 and b"<Code>AccessForbidden</Code>" in body, wrong
    status, _, body = request(walrus, "OPTIONS", "/cors/page.txt", {"Access-Control-Request-Method": "GET"})
    assert status == 400 and b"<Code>BadRequest</Code>" in body
    status, _, body = request(walrus, "OPTIONS", "/cors/page.txt", {"Origin": "http://app.example"})
    assert status == 400 and b"<Code>BadRequest</Code>" in body
    status, _, body = request(walrus, "OPTIONS", "/no-such-cors/x", preflight)
    assert status == 404 and b"<Code>NoSuchBucket</Code>" in body

    # the CORS headers on ordinary answers, successes and errors alike
    status, headers, body = request(walrus, "GET", "/cors/page.txt", {"Origin": "http://app.example"})
    assert status == 200 and body == b"hello"
    assert headers["Access-Control-Allow-Origin"] == "http://app.example"
    assert headers["Access-Control-Expose-Headers"] == "ETag, x-amz-request-id"
    status, headers, _ = request(walrus, "GET", "/cors/missing", {"Origin": "http://app.example"})
    assert status in (403, 404) and headers["Access-Control-Allow-Origin"] == "http://app.example"
    status, headers, _ = request(walrus, "GET", "/cors/page.txt", {"Origin": "http://evil.example"})
    assert status == 200 and "Access-Control-Allow-Origin" not in headers
    status, headers, _ = request(walrus, "GET", "/cors/page.txt", {})
    assert "Access-Control-Allow-Origin" not in headers

    # configuration errors and permissions
    bad_rules = [
        {"CORSRules": [{"AllowedOrigins": ["*"], "AllowedMethods": ["PATCH"]}]},
        {"CORSRules": [{"AllowedOrigins": ["http://*.*.example"], "AllowedMethods": ["GET"]}]},
    ]
    for bad in bad_rules:
        with pytest.raises(ClientError) as err:
            s3.put_bucket_cors(Bucket="cors", CORSConfiguration=bad)
        assert code(err) == "InvalidRequest", bad
    with pytest.raises(ClientError) as err:
        s3.put_bucket_cors(
            Bucket="cors", CORSConfiguration={"CORSRules": [{"AllowedOrigins": ["*"], "AllowedMethods": ["GET"]}] * 101}
        )
    assert code(err) == "MalformedXML"
    for call in (
        lambda: bob.get_bucket_cors(Bucket="cors"),
        lambda: bob.put_bucket_cors(Bucket="cors", CORSConfiguration=RULES),
        lambda: bob.delete_bucket_cors(Bucket="cors"),
    ):
        with pytest.raises(ClientError) as err:
            call()
        assert code(err) == "AccessDenied"
    s3.delete_bucket_cors(Bucket="cors")
    with pytest.raises(ClientError) as err:
        s3.get_bucket_cors(Bucket="cors")
    assert code(err) == "NoSuchCORSConfiguration"
    status, headers, _ = request(walrus, "GET", "/cors/page.txt", {"Origin": "http://app.example"})
    assert status == 200 and "Access-Control-Allow-Origin" not in headers


def test_cors_with_awscli(walrus: Walrus, tmp_path: Path) -> None:
    walrus.client().create_bucket(Bucket="cors-cli")
    aws_ok(
        walrus, tmp_path, "s3api", "put-bucket-cors", "--bucket", "cors-cli", "--cors-configuration", json.dumps(RULES)
    )
    got = json.loads(aws_ok(walrus, tmp_path, "s3api", "get-bucket-cors", "--bucket", "cors-cli"))
    assert got["CORSRules"][0]["AllowedMethods"] == ["GET", "PUT"]
    bad = json.dumps({"CORSRules": [{"AllowedOrigins": ["*"], "AllowedMethods": ["TRACE"]}]})
    assert "InvalidRequest" in aws_error(
        walrus, tmp_path, "s3api", "put-bucket-cors", "--bucket", "cors-cli", "--cors-configuration", bad
    )
    assert "AccessDenied" in aws_error(walrus, tmp_path, "s3api", "get-bucket-cors", "--bucket", "cors-cli", user="bob")
    aws_ok(walrus, tmp_path, "s3api", "delete-bucket-cors", "--bucket", "cors-cli")
    assert "NoSuchCORSConfiguration" in aws_error(walrus, tmp_path, "s3api", "get-bucket-cors", "--bucket", "cors-cli")


@pytest.mark.skipif(shutil.which("s3cmd") is None, reason="s3cmd is installed by deploy/bootstrap.sh")
def test_cors_with_s3cmd(walrus: Walrus, tmp_path: Path) -> None:
    config = s3cmd_config(walrus, tmp_path / "s3cfg", signature_v2=True)
    s3cmd_ok(config, "mb", "s3://cors-s3cmd")
    rules = tmp_path / "cors.xml"
    rules.write_text(
        "<CORSConfiguration><CORSRule><AllowedOrigin>http://site.example</AllowedOrigin>"
        "<AllowedMethod>GET</AllowedMethod><MaxAgeSeconds>30</MaxAgeSeconds></CORSRule></CORSConfiguration>"
    )
    s3cmd_ok(config, "setcors", str(rules), "s3://cors-s3cmd")
    assert "http://site.example" in s3cmd_ok(config, "info", "s3://cors-s3cmd")
    bad = tmp_path / "bad.xml"
    bad.write_text("<CORSConfiguration><CORSRule><AllowedMethod>GET</AllowedMethod></CORSRule>")
    assert "MalformedXML" in s3cmd_error(config, "setcors", str(bad), "s3://cors-s3cmd")
    bob = s3cmd_config(walrus, tmp_path / "s3cfg-bob", signature_v2=False, user="bob")
    assert "AccessDenied" in s3cmd_error(bob, "delcors", "s3://cors-s3cmd")
    s3cmd_ok(config, "delcors", "s3://cors-s3cmd")
    with pytest.raises(ClientError):
        walrus.client().get_bucket_cors(Bucket="cors-s3cmd")
