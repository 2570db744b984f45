"""First start: the administrators' account and its credentials in the CLC's state directory.

`STATE_DIR/admin/eucarc` (with the PEM files beside it, and `admin-credentials.zip`) is written once; if it is
missing later (e.g. removed) it is written again with a new certificate, keeping the access key. `koala up`
copies it to `DIR/eucarc`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from common.pki import write_private
from services.cloud_controller.identity.credentials import EUCARC, Credentials
from services.cloud_controller.identity.store import ADMIN_ACCOUNT, IdentityStore

log = logging.getLogger("koala.clc.identity")
ADMIN_DIR = "admin"
ADMIN_ZIP = "admin-credentials.zip"


async def user_credentials(
    store: IdentityStore, user_id: str, ec2_url: str, s3_url: str, region: str, cloud_cert_pem: str
) -> Credentials:
    """Credentials for a user: its first enabled access key (a new one if it has none) and a new certificate."""
    principal = await store.principal(user_id)
    if principal is None:
        raise ValueError(f"no user {user_id}")
    keys = [key for key in await store.access_keys(user_id) if key.enabled]
    if keys:
        found = await store.lookup(keys[0].access_key_id)
        assert found is not None
        access_key, secret = keys[0].access_key_id, found.secret
    else:
        access_key, secret = await store.create_access_key(user_id)
    cert_pem, key_pem = await store.issue_certificate(user_id)
    return Credentials(
        ec2_url=ec2_url,
        s3_url=s3_url,
        access_key=access_key,
        secret_key=secret,
        account_id=principal.account_id,
        user_name=principal.user_name,
        cert_pem=cert_pem,
        key_pem=key_pem,
        cloud_cert_pem=cloud_cert_pem,
        region=region,
    )


async def ensure_admin(
    store: IdentityStore, state_dir: Path, ec2_url: str, s3_url: str, region: str, cloud_cert_pem: str
) -> Path:
    """Create the admin account if there is none; write its credentials if they are not there. The eucarc path."""
    admin = await store.account_admin(ADMIN_ACCOUNT)
    if admin is None:
        admin = await store.create_account(ADMIN_ACCOUNT, is_admin=True)
    directory = state_dir / ADMIN_DIR
    eucarc = directory / EUCARC
    if not eucarc.exists():
        creds = await user_credentials(store, admin.user_id, ec2_url, s3_url, region, cloud_cert_pem)
        creds.write(directory)
        write_private(directory / ADMIN_ZIP, creds.zip())
        log.info("wrote the admin credentials to %s", directory)
    return eucarc
