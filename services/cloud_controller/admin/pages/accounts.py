"""Accounts and users: create, enable/disable, access keys, the credentials zip. Every change is the identity
store's own (services.cloud_controller.identity); a secret key appears only on the page that created it."""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from common import pki
from common.messages.identity import Principal
from services.cloud_controller.admin.app import Admin, Failure, Page
from services.cloud_controller.identity.store import IdentityStore

BACK = "/admin/accounts"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _account_back(page: Page) -> str:
    account_id = page.form.get("account_id", "")
    if isinstance(account_id, str) and account_id.isdigit() and len(account_id) == 12:
        return f"{BACK}/{account_id}"
    return BACK


async def _user(page: Page) -> tuple[IdentityStore, Principal]:
    store = page.service.identity_store
    principal = await store.principal(page.field("user_id", 64))
    if principal is None:
        raise Failure("That user does not exist (any more).")
    return store, principal


async def list_accounts(page: Page) -> web.StreamResponse:
    store = page.service.identity_store
    accounts = await store.accounts()
    for account in accounts:
        account["users"] = len(await store.users(account["account_id"]))
    return page.render("accounts.html", accounts=accounts)


async def show_account(page: Page) -> web.StreamResponse:
    store = page.service.identity_store
    account_id = page.request.match_info["account_id"]
    account = next((a for a in await store.accounts() if a["account_id"] == account_id), None)
    if account is None:
        raise Failure(f"There is no account {account_id}.", 404)
    users = []
    for user in await store.users(account_id):
        users.append(
            {
                "principal": user,
                "access_keys": await store.access_keys(user.user_id),
                "certificates": await store.certificates(user.user_id),
            }
        )
    return page.render("account.html", account=account, users=users)


async def create_account(page: Page) -> web.StreamResponse:
    store = page.service.identity_store
    admin = await store.create_account(page.field("name", 64))
    page.flash("ok", f"Account {admin.account_name} ({admin.account_id}) was created with its user {admin.user_name}.")
    return page.redirect(f"{BACK}/{admin.account_id}")


async def create_user(page: Page) -> web.StreamResponse:
    store = page.service.identity_store
    user = await store.create_user(page.field("account_id", 12), page.field("name", 64))
    page.flash("ok", f"User {user.user_name} was created; give it an access key or its credentials below.")
    return page.redirect(f"{BACK}/{user.account_id}")


async def set_user_enabled(page: Page) -> web.StreamResponse:
    store, user = await _user(page)
    enabled = page.field("enabled", 1) == "1"
    await store.set_user_enabled(user.user_id, enabled)
    page.flash("ok", f"User {user.user_name} is {'enabled' if enabled else 'disabled'}.")
    return page.redirect(f"{BACK}/{user.account_id}")


async def create_key(page: Page) -> web.StreamResponse:
    store, user = await _user(page)
    access_key, secret = await store.create_access_key(user.user_id)
    # Rendered here and nowhere else: the secret is not kept in the session or shown again.
    return page.render("key_created.html", user=user, access_key=access_key, secret=secret)


async def _key_owner(page: Page) -> tuple[IdentityStore, Principal, str]:
    store, user = await _user(page)
    key_id = page.field("access_key_id", 64)
    if key_id not in {k.access_key_id for k in await store.access_keys(user.user_id)}:
        raise Failure(f"User {user.user_name} has no access key {key_id}.")
    return store, user, key_id


async def set_key_enabled(page: Page) -> web.StreamResponse:
    store, user, key_id = await _key_owner(page)
    enabled = page.field("enabled", 1) == "1"
    await store.set_access_key_enabled(key_id, enabled)
    page.flash("ok", f"Access key {key_id} is {'enabled' if enabled else 'disabled'}.")
    return page.redirect(f"{BACK}/{user.account_id}")


async def delete_key(page: Page) -> web.StreamResponse:
    store, user, key_id = await _key_owner(page)
    await store.delete_access_key(key_id)
    page.flash("ok", f"Access key {key_id} was deleted.")
    return page.redirect(f"{BACK}/{user.account_id}")


async def credentials(page: Page) -> web.StreamResponse:
    """The user's credentials zip (eucarc + PEMs): its first enabled access key (or a new one), a new certificate."""
    from services.cloud_controller.identity.bootstrap import user_credentials

    store, user = await _user(page)
    config = page.service.config
    cloud_cert = await asyncio.to_thread((config.KOALA_PKI_DIR / pki.CLOUD_CERT_FILE).read_text)
    creds = await user_credentials(
        store, user.user_id, config.ec2_url(), config.s3_url(), config.KOALA_REGION, cloud_cert
    )
    body = await asyncio.to_thread(creds.zip)
    name = _SAFE.sub("_", f"{user.account_name}-{user.user_name}")[:100]
    return web.Response(
        body=body,
        content_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}-credentials.zip"'},
    )


def register(admin: Admin) -> None:
    admin.get(BACK, list_accounts)
    admin.get(BACK + "/{account_id:[0-9]{12}}", show_account)
    admin.post(BACK + "/create", create_account, back=BACK)
    admin.post(BACK + "/users/create", create_user, back=_account_back)
    admin.post(BACK + "/users/enabled", set_user_enabled, back=_account_back)
    admin.post(BACK + "/keys/create", create_key, back=_account_back)
    admin.post(BACK + "/keys/enabled", set_key_enabled, back=_account_back)
    admin.post(BACK + "/keys/delete", delete_key, back=_account_back)
    admin.post(BACK + "/credentials", credentials, back=_account_back)
