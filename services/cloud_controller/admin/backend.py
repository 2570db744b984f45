"""Who the admin pages act as. The pages read the Cloud Controller's parts from the service they are installed on
(`page.service`, typed: `.compute`, `.identity_store`, `.ebs`, `.leases`, `.clusters`); every rule stays in the
service code the EC2 API uses (compute.*, identity.*)."""

from __future__ import annotations

from common.messages.identity import Principal
from services.cloud_controller.identity.store import IdentityStore


async def admin_principal(identity: IdentityStore, login: str) -> Principal:
    """Who an admin page acts as: the cloud administrators' account (is_admin), named after the web login."""
    return Principal(
        account_id=await identity.admin_account_id() or "",
        account_name="eucalyptus",
        user_id=f"admin-web:{login}",
        user_name=login,
        is_admin=True,
    )
