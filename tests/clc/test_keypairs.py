"""Key pairs through boto3 and awscli against a real CLC: AWS fingerprints, import formats, isolation."""

from __future__ import annotations

import base64
import hashlib

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tests.clc.ec2_helpers import (
    aws,
    aws_error,
    client,
    code,
    ec2_url,
    sigv2,
    start_clc,
    stop_clean,
)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, clc_database):
    instance = start_clc(tmp_path_factory.mktemp("keypairs") / "cloud", clc_database)
    try:
        yield instance
    finally:
        stop_clean(instance)


def colon(digest: bytes) -> str:
    return ":".join(f"{b:02x}" for b in digest)


def test_create_fingerprint_is_sha1_of_pkcs8(cloud, alice):
    ec2 = client(cloud, alice)
    created = ec2.create_key_pair(KeyName="alpha")
    assert created["KeyName"] == "alpha"
    assert created["KeyPairId"].startswith("key-")
    material = created["KeyMaterial"]
    assert material.startswith("-----BEGIN RSA PRIVATE KEY-----")
    key = serialization.load_pem_private_key(material.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert created["KeyFingerprint"] == colon(hashlib.sha1(pkcs8).digest())
    described = ec2.describe_key_pairs(KeyNames=["alpha"], IncludePublicKey=True)["KeyPairs"]
    assert len(described) == 1
    assert described[0]["KeyFingerprint"] == created["KeyFingerprint"]
    assert described[0]["KeyPairId"] == created["KeyPairId"]
    assert described[0]["KeyType"] == "rsa"
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    assert described[0]["PublicKey"].split()[:2] == public.decode().split()[:2]
    with pytest.raises(ClientError) as caught:
        ec2.create_key_pair(KeyName="alpha")
    assert code(caught) == "InvalidKeyPair.Duplicate"


def test_create_ed25519(cloud, alice):
    created = client(cloud, alice).create_key_pair(KeyName="ed-created", KeyType="ed25519")
    key = serialization.load_ssh_private_key(created["KeyMaterial"].encode(), password=None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    blob = base64.b64decode(line.split()[1])
    assert created["KeyFingerprint"] == base64.b64encode(hashlib.sha256(blob).digest()).decode()


def test_import_fingerprint_is_md5_of_spki(cloud, alice):
    ec2 = client(cloud, alice)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    openssh = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    imported = ec2.import_key_pair(KeyName="imported", PublicKeyMaterial=openssh + b" me@laptop")
    assert imported["KeyFingerprint"] == colon(hashlib.md5(spki).digest())
    # The same key as PEM gives the same fingerprint.
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    again = ec2.import_key_pair(KeyName="imported-pem", PublicKeyMaterial=pem)
    assert again["KeyFingerprint"] == imported["KeyFingerprint"]
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    line = ed.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    ed_imported = ec2.import_key_pair(KeyName="ed", PublicKeyMaterial=line)
    blob = base64.b64decode(line.split()[1])
    assert ed_imported["KeyFingerprint"] == base64.b64encode(hashlib.sha256(blob).digest()).decode()
    with pytest.raises(ClientError) as caught:
        ec2.import_key_pair(KeyName="junk", PublicKeyMaterial=b"ssh-rsa not-a-key")
    assert code(caught) == "InvalidKey.Format"
    names = {k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]}
    assert {"imported", "imported-pem", "ed"} <= names and "junk" not in names


def test_filters_and_not_found(cloud, alice):
    ec2 = client(cloud, alice)
    ec2.create_key_pair(KeyName="web-1")
    ec2.create_key_pair(KeyName="web-2")
    found = ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": ["web-*"]}])["KeyPairs"]
    assert sorted(k["KeyName"] for k in found) == ["web-1", "web-2"]
    fingerprint = found[0]["KeyFingerprint"]
    by_print = ec2.describe_key_pairs(Filters=[{"Name": "fingerprint", "Values": [fingerprint]}])["KeyPairs"]
    assert [k["KeyName"] for k in by_print] == [found[0]["KeyName"]]
    with pytest.raises(ClientError) as caught:
        ec2.describe_key_pairs(KeyNames=["nope"])
    assert code(caught) == "InvalidKeyPair.NotFound"
    with pytest.raises(ClientError) as caught:
        ec2.describe_key_pairs(Filters=[{"Name": "no-such-filter", "Values": ["x"]}])
    assert code(caught) == "InvalidParameterValue"


def test_delete(cloud, alice):
    ec2 = client(cloud, alice)
    created = ec2.create_key_pair(KeyName="temporary")
    ec2.delete_key_pair(KeyName="temporary")
    assert "temporary" not in {k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]}
    ec2.delete_key_pair(KeyName="temporary")  # EC2 answers true for a name that does not exist
    with pytest.raises(ClientError) as caught:
        ec2.delete_key_pair(KeyPairId=created["KeyPairId"])
    assert code(caught) == "InvalidKeyPair.NotFound"
    other = ec2.create_key_pair(KeyName="by-id")
    ec2.delete_key_pair(KeyPairId=other["KeyPairId"])
    assert "by-id" not in {k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]}


def test_isolation(cloud, alice, bob):
    ec2_a, ec2_b = client(cloud, alice), client(cloud, bob)
    secret = ec2_a.create_key_pair(KeyName="alice-only")
    assert "alice-only" not in {k["KeyName"] for k in ec2_b.describe_key_pairs()["KeyPairs"]}
    with pytest.raises(ClientError) as caught:
        ec2_b.describe_key_pairs(KeyNames=["alice-only"])
    assert code(caught) == "InvalidKeyPair.NotFound"
    with pytest.raises(ClientError) as caught:
        ec2_b.delete_key_pair(KeyPairId=secret["KeyPairId"])
    assert code(caught) == "InvalidKeyPair.NotFound"
    ec2_b.delete_key_pair(KeyName="alice-only")  # deletes nothing of Alice's
    assert ec2_a.describe_key_pairs(KeyNames=["alice-only"])["KeyPairs"][0]["KeyPairId"] == secret["KeyPairId"]
    # Bob may use the same name for a key of his own.
    bobs = ec2_b.create_key_pair(KeyName="alice-only")
    assert bobs["KeyPairId"] != secret["KeyPairId"]


def test_awscli(cloud, bob):
    created = aws(cloud, bob, "create-key-pair", "--key-name", "cli-key")
    assert created["KeyName"] == "cli-key" and created["KeyMaterial"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    listed = aws(cloud, bob, "describe-key-pairs", "--key-names", "cli-key")
    assert listed["KeyPairs"][0]["KeyFingerprint"] == created["KeyFingerprint"]
    assert "InvalidKeyPair.Duplicate" in aws_error(cloud, bob, "create-key-pair", "--key-name", "cli-key")
    aws(cloud, bob, "delete-key-pair", "--key-name", "cli-key")
    assert "InvalidKeyPair.NotFound" in aws_error(cloud, bob, "describe-key-pairs", "--key-names", "cli-key")


def test_ec2_api_tools_style(cloud, alice):
    """SigV2 POST to /services/compute with an old Version, the way ec2-api-tools creates and lists keys."""
    url = cloud.url("clc") + "/services/compute"
    reply = sigv2(url, {"Action": "CreateKeyPair", "Version": "2013-02-01", "KeyName": "tools-key"}, alice)
    assert reply.status == 200, reply.body
    ns = {"e": "http://ec2.amazonaws.com/doc/2013-02-01/"}
    assert reply.xml.find("e:keyName", ns).text == "tools-key"
    assert reply.xml.find("e:keyMaterial", ns).text.startswith("-----BEGIN RSA PRIVATE KEY-----")
    listed = sigv2(url, {"Action": "DescribeKeyPairs", "Version": "2013-02-01", "KeyName.1": "tools-key"}, alice)
    items = listed.xml.findall("e:keySet/e:item", ns)
    assert [i.find("e:keyName", ns).text for i in items] == ["tools-key"]
    assert ec2_url(cloud).endswith("/services/Eucalyptus")
