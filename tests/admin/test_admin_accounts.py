"""Accounts, users, access keys and the credentials zip through the admin pages; the downloaded credentials then
work with boto3 against the same CLC."""

from __future__ import annotations

import io
import zipfile

import boto3
from botocore.config import Config

from services.cloud_controller.identity.credentials import parse_eucarc
from tests.admin.conftest import open_page, screenshot


def _ec2(url: str, access_key: str, secret: str):
    return boto3.client(
        "ec2",
        endpoint_url=url,
        region_name="eucalyptus",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}),
    )


def test_create_account_user_key_and_credentials(admin_cloud, browser_context, admin_password, tmp_path) -> None:
    page = open_page(browser_context, admin_password, "/admin/accounts")
    assert "eucalyptus" in page.inner_text("#accounts")
    page.fill("#create-account input[name=name]", "research")
    page.click("#create-account button")
    assert "Account research (" in page.inner_text(".flash")
    account_url = page.url
    # A bad name gets the identity store's own message, on the page the form came from.
    page.goto("/admin/accounts")
    page.fill("#create-account input[name=name]", "Bad Name!")
    page.click("#create-account button")
    assert "invalid account name" in page.inner_text(".flash.error")
    page.fill("#create-account input[name=name]", "research")
    page.click("#create-account button")
    assert "already exists" in page.inner_text(".flash.error")
    screenshot(page, "accounts")

    page.goto(account_url)
    page.fill("#create-user input[name=name]", "alice")
    page.click("#create-user button")
    assert "User alice was created" in page.inner_text(".flash")

    # An access key: its secret is on its creation page only.
    page.click("#user-alice button:has-text('Create access key')")
    access_key = page.inner_text("#access-key-id")
    secret = page.inner_text("#secret-key")
    assert access_key.startswith("AKI") and len(secret) >= 30
    screenshot(page, "key-created")
    page.goto(account_url)
    assert access_key in page.inner_text("#user-alice")
    assert secret not in page.content()
    ec2_url = admin_cloud.url("clc") + "/services/Eucalyptus"
    assert _ec2(ec2_url, access_key, secret).describe_key_pairs()["KeyPairs"] == []

    # The credentials zip (a browser download), then boto3 with what it holds.
    with page.expect_download() as info:
        page.click("#user-alice button[name=download]")
    download = info.value
    assert download.suggested_filename == "research-alice-credentials.zip"
    target = tmp_path / "creds"
    with zipfile.ZipFile(io.BytesIO(open(download.path(), "rb").read())) as archive:
        archive.extractall(target)
    values = parse_eucarc(target / "eucarc")
    assert values["EC2_ACCESS_KEY"] == access_key  # its enabled key is reused
    client = _ec2(values["EC2_URL"], values["EC2_ACCESS_KEY"], values["EC2_SECRET_KEY"])
    client.create_key_pair(KeyName="from-admin-page")
    assert [k["KeyName"] for k in client.describe_key_pairs()["KeyPairs"]] == ["from-admin-page"]
    screenshot(page, "account")

    # Disabling the user stops its key at once (the store's rule, not the page's).
    page.click("#user-alice button:has-text('Disable user')")
    assert "User alice is disabled." in page.inner_text(".flash")
    try:
        client.describe_key_pairs()
        raise AssertionError("a disabled user's key still works")
    except client.exceptions.ClientError as err:
        assert err.response["Error"]["Code"] in ("AuthFailure", "InvalidClientTokenId", "OptInRequired")
    page.click("#user-alice button:has-text('Enable user')")
    assert client.describe_key_pairs()["KeyPairs"]
    page.close()
