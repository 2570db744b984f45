"""Browser-based POST uploads without a browser: forms boto3 signs (SigV4 and SigV2 policies), every condition
kind, success_action_*, content-length-range, the fields as metadata, and S3's errors for each failure.
(awscli and s3cmd have no POST-upload command; awscli checks what the uploads stored.) The same upload from
real Chromium is in test_browser.py."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest

from tests.walrus.cli import aws_ok
from tests.walrus.conftest import Walrus
from tests.walrus.forms import post

BUCKET = "forms"


@pytest.fixture(scope="module")
def s3(walrus: Walrus):
    client = walrus.client()
    client.create_bucket(Bucket=BUCKET)
    return client


def presigned(walrus: Walrus, key: str, fields: dict, conditions: list, signature: str = "s3v4", expires: int = 300):
    client = walrus.client(signature=signature)
    return client.generate_presigned_post(BUCKET, key, Fields=fields, Conditions=conditions, ExpiresIn=expires)


def error_code(body: bytes) -> str:
    return body.split(b"<Code>")[1].split(b"</Code>")[0].decode()


@pytest.mark.parametrize("signature", ["s3v4", "s3"], ids=["sigv4", "sigv2"])
def test_signed_post_upload(walrus: Walrus, s3, signature: str, tmp_path: Path) -> None:
    key = f"uploads/{signature}/${{filename}}"
    fields = {
        "acl": "public-read",
        "Content-Type": "image/png",
        "Cache-Control": "max-age=30",
        "x-amz-meta-color": "blue",
        "success_action_status": "201",
    }
    conditions = [
        {"acl": "public-read"},
        ["starts-with", "$Content-Type", "image/"],
        ["eq", "$Cache-Control", "max-age=30"],
        ["starts-with", "$x-amz-meta-color", ""],
        {"success_action_status": "201"},
        ["starts-with", "$key", f"uploads/{signature}/"],
        ["content-length-range", 1, 1000],
    ]
    form = presigned(walrus, key, fields, conditions, signature)
    status, headers, body = post(form["url"], form["fields"], ("pixel.png", b"\x89PNG fake", "image/png"))
    assert status == 201, body
    stored = f"uploads/{signature}/pixel.png"
    assert f"<Key>{stored}</Key>".encode() in body and f"<Bucket>{BUCKET}</Bucket>".encode() in body
    assert headers["ETag"].strip('"') in body.decode()
    head = s3.head_object(Bucket=BUCKET, Key=stored)
    assert head["ContentType"] == "image/png" and head["Metadata"] == {"color": "blue"}
    assert head["CacheControl"] == "max-age=30" and head["ContentLength"] == 9
    assert walrus.anonymous().get_object(Bucket=BUCKET, Key=stored)["Body"].read() == b"\x89PNG fake"
    grants = s3.get_object_acl(Bucket=BUCKET, Key=stored)["Grants"]
    assert {g["Grantee"].get("URI") for g in grants} >= {"http://acs.amazonaws.com/groups/global/AllUsers"}
    assert stored in aws_ok(walrus, tmp_path, "s3", "ls", "--recursive", f"s3://{BUCKET}/uploads/")


def test_success_actions(walrus: Walrus, s3) -> None:
    form = presigned(walrus, "plain", {}, [])
    status, headers, body = post(form["url"], form["fields"])
    assert status == 204 and body == b"" and headers["Location"].endswith(f"/{BUCKET}/plain")
    form = presigned(walrus, "ok200", {"success_action_status": "200"}, [{"success_action_status": "200"}])
    assert post(form["url"], form["fields"])[0] == 200
    target = "http://app.example/done?from=form"
    form = presigned(walrus, "redir", {"success_action_redirect": target}, [{"success_action_redirect": target}])
    status, headers, _ = post(form["url"], form["fields"], ("r.txt", b"redirected", "text/plain"))
    assert status == 303
    etag = s3.head_object(Bucket=BUCKET, Key="redir")["ETag"]
    assert headers["Location"] == f"{target}&bucket={BUCKET}&key=redir&etag=%22{etag.strip(chr(34))}%22"


def test_anonymous_post(walrus: Walrus, s3) -> None:
    fields = {"key": "anon-upload"}
    status, _, body = post(walrus.url + f"/{BUCKET}", fields)
    assert status == 403 and error_code(body) == "AccessDenied"
    s3.create_bucket(Bucket="forms-open", ACL="public-read-write")
    public = {**fields, "acl": "public-read"}
    status, _, _ = post(walrus.url + "/forms-open", public, ("a.txt", b"anonymous bytes", "text/plain"))
    assert status == 204
    assert walrus.anonymous().get_object(Bucket="forms-open", Key="anon-upload")["Body"].read() == b"anonymous bytes"


def _form_with_policy(walrus: Walrus, policy: dict, extra: dict | None = None) -> tuple[str, dict]:
    """A SigV2 form signed over an arbitrary policy document (to test what boto3 would not produce)."""
    import hashlib
    import hmac

    from tests.walrus.conftest import USERS

    access, secret, _, _ = USERS["alice"]
    encoded = base64.b64encode(json.dumps(policy).encode()).decode()
    signature = base64.b64encode(hmac.new(secret.encode(), encoded.encode(), hashlib.sha1).digest()).decode()
    fields = {"key": "k", "AWSAccessKeyId": access, "policy": encoded, "signature": signature, **(extra or {})}
    return walrus.url + f"/{BUCKET}", fields


def test_post_failures(walrus: Walrus, s3) -> None:
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    key_ok = ["starts-with", "$key", ""]
    cases = [
        # (what, policy, extra fields, file, expected status, code, message part)
        ("expired", {"expiration": past, "conditions": [key_ok]}, {}, None, 403, "AccessDenied", b"Policy expired"),
        ("condition", {"expiration": future, "conditions": [["starts-with", "$key", "user/"]]}, {}, None, 403,
         "AccessDenied", b"Policy Condition failed"),
        ("eq", {"expiration": future, "conditions": [key_ok, ["eq", "$acl", "private"]]}, {"acl": "public-read"},
         None, 403, "AccessDenied", b"Policy Condition failed"),
        ("extra field", {"expiration": future, "conditions": [key_ok]}, {"x-amz-meta-sneaky": "1"}, None, 403,
         "AccessDenied", b"Extra input fields: x-amz-meta-sneaky"),
        ("bucket", {"expiration": future, "conditions": [key_ok, {"bucket": "other"}]}, {}, None, 403,
         "AccessDenied", b"Policy Condition failed"),
        ("content type list", {"expiration": future, "conditions": [key_ok, ["starts-with", "$Content-Type",
                                                                              "image/"]]},
         {"Content-Type": "image/png, text/html"}, None, 403, "AccessDenied", b"Policy Condition failed"),
        ("too large", {"expiration": future, "conditions": [key_ok, ["content-length-range", 0, 10]]}, {},
         ("big", b"x" * 11, "text/plain"), 400, "EntityTooLarge", b""),
        ("too small", {"expiration": future, "conditions": [key_ok, ["content-length-range", 5, 10]]}, {},
         ("small", b"x" * 4, "text/plain"), 400, "EntityTooSmall", b""),
        ("no expiration", {"conditions": [key_ok]}, {}, None, 400, "InvalidPolicyDocument", b"expiration"),
        ("bad operator", {"expiration": future, "conditions": [["matches", "$key", "x"]]}, {}, None, 400,
         "InvalidPolicyDocument", b""),
    ]  # fmt: skip
    for what, policy, extra, file, status, code, message in cases:
        url, fields = _form_with_policy(walrus, policy, extra)
        answer = post(url, fields, file or ("f.txt", b"x", "text/plain"))
        assert answer[0] == status and error_code(answer[2]) == code and message in answer[2], (what, answer)
    url, fields = _form_with_policy(walrus, {"expiration": future, "conditions": [key_ok]})
    assert post(url, fields)[0] == 204
    for what, change, status, code in [
        ("bad signature", {"signature": base64.b64encode(b"0" * 20).decode()}, 403, "SignatureDoesNotMatch"),
        ("unknown key", {"AWSAccessKeyId": "AKIANOBODY0000000009"}, 0, ""),
        ("not base64", {"policy": "%%%"}, 0, ""),
    ]:
        answer = post(url, {**fields, **change})
        if status:
            assert (answer[0], error_code(answer[2])) == (status, code), what
        else:
            assert answer[0] in (400, 403, 503) and b"<Error>" in answer[2], what
    no_key = {k: v for k, v in fields.items() if k != "key"}
    answer = post(url, no_key)
    assert answer[0] == 400 and error_code(answer[2]) == "InvalidArgument" and b"named 'key'" in answer[2]
    answer = post(url, fields, file=None)
    assert answer[0] == 400 and error_code(answer[2]) == "InvalidArgument"
    answer = post(url, {**fields, "x-ignore-padding": "p" * 21000})
    assert answer[0] == 400 and error_code(answer[2]) == "MaxPostPreDataLengthExceededError"
    # not a form at all
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=b"key=k", method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert err.value.code == 412 and b"<Code>PreconditionFailed</Code>" in err.value.read()
    # a policy may let a key through, but the bucket's ACL and policy still decide
    bob_form = walrus.client("bob").generate_presigned_post(BUCKET, "from-bob")
    answer = post(bob_form["url"], bob_form["fields"])
    assert answer[0] == 403 and error_code(answer[2]) == "AccessDenied"


def test_post_form_tagging(walrus: Walrus, s3) -> None:
    tagging = "<Tagging><TagSet><Tag><Key>via</Key><Value>form</Value></Tag></TagSet></Tagging>"
    form = presigned(walrus, "tagged-by-form", {"tagging": tagging}, [{"tagging": tagging}])
    assert post(form["url"], form["fields"], ("t.txt", b"tagged", "text/plain"))[0] == 204
    assert s3.get_object_tagging(Bucket=BUCKET, Key="tagged-by-form")["TagSet"] == [{"Key": "via", "Value": "form"}]
    too_many = "".join(f"<Tag><Key>k{i}</Key><Value>v</Value></Tag>" for i in range(11))
    refused = f"<Tagging><TagSet>{too_many}</TagSet></Tagging>"
    form = presigned(walrus, "refused-by-form", {"tagging": refused}, [{"tagging": refused}])
    status, _, body = post(form["url"], form["fields"], ("t.txt", b"tagged", "text/plain"))
    assert (status, error_code(body)) == (400, "BadRequest")
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="refused-by-form")["KeyCount"] == 0
