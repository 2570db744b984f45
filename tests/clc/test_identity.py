"""Identity on a real CLC: the admin account and its credentials at first start, user certificates signed by
the cloud CA, the credentials zip, `koala admin`, DIR/eucarc for `koala up`, and the signed identity interface
Walrus calls (ResolveAccessKey, ResolveCertificate, ResolveAccount) with its role checks."""

from __future__ import annotations

import asyncio
import base64
import io
import subprocess
import sys
import zipfile

import pytest
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from common import pki
from common.messages import identity as ident
from common.messages import identity_admin as msg
from common.rpc import RpcClient, RpcError
from common.signing import Identity, TrustStore
from services.cloud_controller.identity.credentials import parse_eucarc
from tests.clc.ec2_helpers import Creds, admin_call, admin_creds, client, new_account, start_clc, stop_clean

EUCARC_KEYS = {
    "EC2_URL",
    "S3_URL",
    "EC2_ACCESS_KEY",
    "EC2_SECRET_KEY",
    "EC2_CERT",
    "EC2_PRIVATE_KEY",
    "EUCALYPTUS_CERT",
    "EC2_USER_ID",
}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, clc_database):
    instance = start_clc(tmp_path_factory.mktemp("identity") / "cloud", clc_database)
    try:
        yield instance
    finally:
        stop_clean(instance)


def call_as(cloud, role_id: str, operation: str, message, answer):
    """Call the CLC's internal interface with the certificate of component `role_id` (e.g. walrus)."""
    directory = cloud.aio.pki

    async def run():
        rpc = RpcClient(
            Identity.from_files(directory.cert_path(role_id), directory.key_path(role_id)),
            TrustStore(pki.load_cert(directory.ca_path)),
            retries=1,
        )
        try:
            return await rpc.call(cloud.url("clc"), operation, message, answer, expect_role="clc")
        finally:
            await rpc.close()

    return asyncio.run(run())


def test_admin_credentials_at_first_start(cloud):
    rc = cloud.admin_credentials()
    assert EUCARC_KEYS <= set(rc)
    assert rc["EC2_URL"] == cloud.url("clc") + "/services/Eucalyptus"
    assert rc["S3_URL"] == cloud.url("walrus") + "/services/Walrus"
    assert len(rc["EC2_USER_ID"]) == 12 and rc["EC2_USER_ID"].isdigit()
    ca = pki.load_cert(cloud.aio.pki.ca_path)
    cert = x509.load_pem_x509_certificate(open(rc["EC2_CERT"], "rb").read())
    cert.verify_directly_issued_by(ca)
    assert pki.role_of(cert) == "user"
    key = serialization.load_pem_private_key(open(rc["EC2_PRIVATE_KEY"], "rb").read(), password=None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    assert open(rc["EUCALYPTUS_CERT"]).read() == (cloud.aio.pki.path / pki.CLOUD_CERT_FILE).read_text()
    admin_dir = cloud.aio.admin_eucarc_source().parent
    assert oct(admin_dir.stat().st_mode & 0o777) == "0o700"
    assert oct((admin_dir / "eucarc").stat().st_mode & 0o777) == "0o600"
    # `koala up` copies it to DIR/eucarc.
    target = cloud.aio.install_eucarc()
    assert target == cloud.dir / "eucarc" and parse_eucarc(target) == rc
    # The admin's credentials work, and its account is the admin account.
    assert client(cloud, admin_creds(cloud)).describe_key_pairs()["KeyPairs"] == []
    assert rc["EC2_SECRET_KEY"] not in cloud.log("clc")


def test_admin_credentials_survive_restart(cloud):
    before = cloud.admin_credentials()
    cloud.stop("clc")
    cloud.start("clc")
    assert cloud.admin_credentials() == before
    assert client(cloud, admin_creds(cloud)).describe_regions()["Regions"]


def test_walrus_resolves_access_keys(cloud):
    rc = cloud.admin_credentials()
    found = call_as(
        cloud,
        "walrus",
        "ResolveAccessKey",
        ident.ResolveAccessKeyRequest(access_key_id=rc["EC2_ACCESS_KEY"]),
        ident.ResolveAccessKeyResponse,
    )
    assert found.found and found.enabled and found.secret_access_key == rc["EC2_SECRET_KEY"]
    assert found.principal.account_id == rc["EC2_USER_ID"]
    assert found.principal.is_admin and found.principal.account_name == "eucalyptus"
    unknown = call_as(
        cloud,
        "walrus",
        "ResolveAccessKey",
        ident.ResolveAccessKeyRequest(access_key_id="AKINOSUCHKEY00000000"),
        ident.ResolveAccessKeyResponse,
    )
    assert not unknown.found and unknown.secret_access_key == ""
    # Disabled keys come back not enabled.
    user = new_account(cloud, "carol")
    admin_call(
        cloud,
        "SetAccessKeyEnabled",
        msg.SetAccessKeyEnabledRequest(access_key_id=user.access_key, enabled=False),
        msg.Done,
    )
    disabled = call_as(
        cloud,
        "walrus",
        "ResolveAccessKey",
        ident.ResolveAccessKeyRequest(access_key_id=user.access_key),
        ident.ResolveAccessKeyResponse,
    )
    assert disabled.found and not disabled.enabled
    assert not disabled.principal.is_admin and disabled.principal.account_name == "carol"


def test_walrus_resolves_certificates_and_accounts(cloud):
    rc = cloud.admin_credentials()
    pem = open(rc["EC2_CERT"]).read()
    found = call_as(
        cloud,
        "walrus",
        "ResolveCertificate",
        ident.ResolveCertificateRequest(certificate_pem=pem),
        ident.ResolveCertificateResponse,
    )
    assert found.found and found.active and found.principal.account_id == rc["EC2_USER_ID"]
    stranger = pki.cert_pem(pki.load_cert(cloud.aio.pki.cert_path("walrus"))).decode()
    unknown = call_as(
        cloud,
        "walrus",
        "ResolveCertificate",
        ident.ResolveCertificateRequest(certificate_pem=stranger),
        ident.ResolveCertificateResponse,
    )
    assert not unknown.found
    garbage = call_as(
        cloud,
        "walrus",
        "ResolveCertificate",
        ident.ResolveCertificateRequest(certificate_pem="-----BEGIN CERTIFICATE-----\nnope\n"),
        ident.ResolveCertificateResponse,
    )
    assert not garbage.found
    account = call_as(
        cloud,
        "walrus",
        "ResolveAccount",
        ident.ResolveAccountRequest(account_id=rc["EC2_USER_ID"]),
        ident.ResolveAccountResponse,
    )
    assert account.found and account.principal.user_name == "admin"
    missing = call_as(
        cloud, "walrus", "ResolveAccount", ident.ResolveAccountRequest(account_id="999"), ident.ResolveAccountResponse
    )
    assert not missing.found


def test_roles_are_checked(cloud):
    request = ident.ResolveAccessKeyRequest(access_key_id=cloud.admin_credentials()["EC2_ACCESS_KEY"])
    with pytest.raises(RpcError) as caught:
        call_as(cloud, "nc-node1", "ResolveAccessKey", request, ident.ResolveAccessKeyResponse)
    assert caught.value.status == 403
    with pytest.raises(RpcError) as caught:
        call_as(cloud, "walrus", "CreateAccount", msg.CreateAccountRequest(name="sneaky"), msg.NewAccessKey)
    assert caught.value.status == 403


def test_users_keys_and_credentials_zip(cloud):
    dave = new_account(cloud, "dave")
    user = admin_call(cloud, "CreateUser", msg.CreateUserRequest(account="dave", name="ops"), msg.UserResponse)
    assert user.principal.account_id == dave.account_id and user.principal.user_name == "ops"
    key = admin_call(cloud, "CreateAccessKey", msg.UserRef(account="dave", user="ops"), msg.NewAccessKey)
    ops = Creds(key.access_key_id, key.secret_access_key, dave.account_id)
    # Users of one account share its resources (EC2: resources belong to accounts).
    client(cloud, dave).create_key_pair(KeyName="shared")
    assert [k["KeyName"] for k in client(cloud, ops).describe_key_pairs()["KeyPairs"]] == ["shared"]
    # A disabled user is refused at once.
    admin_call(cloud, "SetUserEnabled", msg.SetUserEnabledRequest(account="dave", user="ops", enabled=False), msg.Done)
    with pytest.raises(ClientError) as caught:
        client(cloud, ops).describe_key_pairs()
    assert caught.value.response["Error"]["Code"] == "AuthFailure"
    with pytest.raises(RpcError) as caught:
        admin_call(cloud, "CreateUser", msg.CreateUserRequest(account="dave", name="ops"), msg.UserResponse)
    assert caught.value.code == "EntityAlreadyExists"
    creds = admin_call(cloud, "GetCredentials", msg.UserRef(account="dave", user="admin"), msg.CredentialsResponse)
    archive = zipfile.ZipFile(io.BytesIO(base64.b64decode(creds.zip_base64)))
    names = set(archive.namelist())
    assert "eucarc" in names and "cloud-cert.pem" in names
    assert any(n.endswith("-cert.pem") for n in names) and any(n.endswith("-pk.pem") for n in names)
    eucarc = archive.read("eucarc").decode()
    assert "EUCA_KEY_DIR=" in eucarc and f"export EC2_ACCESS_KEY={dave.access_key}" in eucarc
    for key_name in EUCARC_KEYS:
        assert f"export {key_name}=" in eucarc
    listed = admin_call(cloud, "ListAccounts", None, msg.ListAccountsResponse)
    by_name = {a.name: a for a in listed.accounts}
    assert by_name["eucalyptus"].is_admin and not by_name["dave"].is_admin
    assert {u.principal.user_name for u in by_name["dave"].users} == {"admin", "ops"}
    assert dave.secret_key not in listed.model_dump_json()


def test_secret_keys_are_safe_on_a_command_line(cloud):
    """A secret is handed to tools as an argument (`-s SECRET`): one that began with "-" was read as an option
    (CI failed so once). Twelve keys: with the old alphabet (64 symbols, "-" and "_" among them) all twelve
    avoiding both has a chance of about 1 in 4 million."""
    secrets = [new_account(cloud, f"cli{n}").secret_key for n in range(6)]
    for n in range(6):
        admin_call(cloud, "CreateUser", msg.CreateUserRequest(account=f"cli{n}", name="ops"), msg.UserResponse)
        key = admin_call(cloud, "CreateAccessKey", msg.UserRef(account=f"cli{n}", user="ops"), msg.NewAccessKey)
        secrets.append(key.secret_access_key)
    assert len(set(secrets)) == 12
    for secret in secrets:
        assert len(secret) == 40 and secret.isascii() and secret.isalnum(), secret


def test_koala_admin_cli(cloud, tmp_path):
    def koala(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cli", "admin", "--state-dir", str(cloud.dir), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    made = koala("create-account", "erin")
    assert made.returncode == 0, made.stderr
    assert '"secret_access_key"' in made.stdout
    listed = koala("accounts")
    assert listed.returncode == 0 and "ACCOUNT\terin\t" in listed.stdout
    target = tmp_path / "erin.zip"
    written = koala("credentials", "erin", "admin", "-o", str(target))
    assert written.returncode == 0, written.stderr
    with zipfile.ZipFile(target) as archive:
        assert "eucarc" in archive.namelist()
    again = koala("create-account", "erin")
    assert again.returncode == 1 and "EntityAlreadyExists" in again.stderr
