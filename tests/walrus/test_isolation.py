"""Isolation between users, anonymous access where an ACL allows it, and aws-exec-read (owner and cloud only)."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from botocore.exceptions import ClientError

from common import pki
from common.signing import Identity
from tests.walrus.conftest import Walrus


def denied(call, *args, **kwargs) -> str:
    with pytest.raises(ClientError) as err:
        call(*args, **kwargs)
    return err.value.response["Error"]["Code"]


@pytest.fixture(scope="module")
def setup(walrus: Walrus):
    alice = walrus.client("alice")
    alice.create_bucket(Bucket="alice-private")
    alice.put_object(Bucket="alice-private", Key="secret", Body=b"alice's secret")
    alice.create_bucket(Bucket="alice-public", ACL="public-read")
    alice.put_object(Bucket="alice-public", Key="open", Body=b"for everyone", ACL="public-read")
    alice.put_object(Bucket="alice-public", Key="closed", Body=b"private object in public bucket")
    alice.put_object(Bucket="alice-public", Key="image.manifest.xml", Body=b"<manifest/>", ACL="aws-exec-read")
    return alice


def test_other_user_cannot_touch_private_data(walrus: Walrus, setup) -> None:
    bob = walrus.client("bob")
    assert "alice-private" not in [b["Name"] for b in bob.list_buckets()["Buckets"]]
    assert denied(bob.list_objects_v2, Bucket="alice-private") == "AccessDenied"
    assert denied(bob.get_object, Bucket="alice-private", Key="secret") == "AccessDenied"
    assert denied(bob.get_object, Bucket="alice-private", Key="nothing-here") == "AccessDenied"
    assert denied(bob.put_object, Bucket="alice-private", Key="intruder", Body=b"x") == "AccessDenied"
    assert denied(bob.delete_object, Bucket="alice-private", Key="secret") == "AccessDenied"
    assert denied(bob.delete_bucket, Bucket="alice-private") == "AccessDenied"
    assert denied(bob.get_bucket_acl, Bucket="alice-private") == "AccessDenied"
    assert denied(bob.put_bucket_acl, Bucket="alice-private", ACL="public-read") == "AccessDenied"
    assert denied(bob.get_object_acl, Bucket="alice-private", Key="secret") == "AccessDenied"
    assert denied(bob.create_multipart_upload, Bucket="alice-private", Key="mp") == "AccessDenied"
    assert denied(bob.copy_object, Bucket="alice-private", Key="c", CopySource="alice-private/secret") == (
        "AccessDenied"
    )
    bob.create_bucket(Bucket="bob-bucket")
    assert denied(bob.copy_object, Bucket="bob-bucket", Key="stolen", CopySource="alice-private/secret") == (
        "AccessDenied"
    )
    result = bob.delete_objects(Bucket="alice-private", Delete={"Objects": [{"Key": "secret"}]})
    assert result["Errors"][0]["Code"] == "AccessDenied"
    assert setup.get_object(Bucket="alice-private", Key="secret")["Body"].read() == b"alice's secret"


def test_anonymous_access_follows_acls(walrus: Walrus, setup) -> None:
    anonymous = walrus.anonymous()
    assert anonymous.get_object(Bucket="alice-public", Key="open")["Body"].read() == b"for everyone"
    assert "open" in [o["Key"] for o in anonymous.list_objects(Bucket="alice-public")["Contents"]]
    assert denied(anonymous.get_object, Bucket="alice-public", Key="closed") == "AccessDenied"
    assert denied(anonymous.get_object, Bucket="alice-private", Key="secret") == "AccessDenied"
    assert denied(anonymous.list_objects, Bucket="alice-private") == "AccessDenied"
    assert denied(anonymous.put_object, Bucket="alice-public", Key="x", Body=b"x") == "AccessDenied"
    assert denied(anonymous.list_buckets) == "AccessDenied"
    with urllib.request.urlopen(f"{walrus.url}/alice-public/open") as response:
        assert response.read() == b"for everyone"
    # bob is not the owner but the object is public
    assert walrus.client("bob").get_object(Bucket="alice-public", Key="open")["Body"].read() == b"for everyone"
    # authenticated-read: any signed-in user, not anonymous
    setup.put_object(Bucket="alice-public", Key="members", Body=b"m", ACL="authenticated-read")
    assert walrus.client("bob").get_object(Bucket="alice-public", Key="members")["Body"].read() == b"m"
    assert denied(anonymous.get_object, Bucket="alice-public", Key="members") == "AccessDenied"


def test_public_read_write_bucket(walrus: Walrus, setup) -> None:
    setup.create_bucket(Bucket="alice-dropbox", ACL="public-read-write")
    bob = walrus.client("bob")
    bob.put_object(Bucket="alice-dropbox", Key="from-bob", Body=b"hi", ACL="bucket-owner-read")
    assert setup.get_object(Bucket="alice-dropbox", Key="from-bob")["Body"].read() == b"hi"
    bob.put_object(Bucket="alice-dropbox", Key="bob-only", Body=b"mine")
    assert denied(setup.get_object, Bucket="alice-dropbox", Key="bob-only") == "AccessDenied"


def _internal_get(walrus: Walrus, component: str, path: str) -> tuple[int, bytes]:
    pki_dir = pki.PkiDir(walrus.cloud.dir / "pki")
    identity = Identity.from_files(pki_dir.cert_path(component), pki_dir.key_path(component))
    headers = identity.sign_headers("GET", path, "walrus", b"")
    headers["X-Koala-Cert-Pem"] = identity.cert_der_b64
    request = urllib.request.Request(walrus.url + path, headers=headers)
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_aws_exec_read_is_for_owner_and_cloud_only(walrus: Walrus, setup) -> None:
    key = "image.manifest.xml"
    assert setup.get_object(Bucket="alice-public", Key=key)["Body"].read() == b"<manifest/>"
    assert denied(walrus.client("bob").get_object, Bucket="alice-public", Key=key) == "AccessDenied"
    assert denied(walrus.anonymous().get_object, Bucket="alice-public", Key=key) == "AccessDenied"
    # the cloud: the admin account, and components (NC, CLC) signing with their certificates
    assert walrus.client("admin").get_object(Bucket="alice-public", Key=key)["Body"].read() == b"<manifest/>"
    assert _internal_get(walrus, "nc-node1", f"/alice-public/{key}") == (200, b"<manifest/>")
    assert _internal_get(walrus, "clc", f"/alice-public/{key}") == (200, b"<manifest/>")
    status, body = _internal_get(walrus, "nc-node1", "/alice-private/secret")
    assert status == 403 and b"AccessDenied" in body
    status, body = _internal_get(walrus, "cc-zone1", f"/alice-public/{key}")
    assert status == 403 and b"AccessDenied" in body
    assert denied(walrus.client("admin").get_object, Bucket="alice-private", Key="secret") == "AccessDenied"
