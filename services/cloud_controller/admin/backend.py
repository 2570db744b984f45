"""The admin pages' view of the Cloud Controller's parts. Every rule stays in the service code the EC2 API uses
(compute.*, identity.*); this module only finds those parts on the running service and reports clearly when one
is not there."""

from __future__ import annotations

from typing import Any

from common.messages.identity import Principal


class Unavailable(Exception):
    """A part of the CLC the page needs is not running; the page shows the message instead of failing."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def compute(service: Any) -> Any:
    engine = getattr(service, "compute", None)
    if engine is None:
        raise Unavailable("The compute engine is not running on this Cloud Controller.")
    return engine


def admin_principal(service: Any, login: str) -> Principal:
    """Who an admin page acts as: the cloud administrator (is_admin), named after the web login."""
    account_id, account_name = "", "eucalyptus"
    finder = getattr(getattr(service, "identity_store", None), "admin_account", None)
    if finder is not None:
        account = finder()
        account_id, account_name = getattr(account, "account_id", ""), getattr(account, "name", account_name)
    return Principal(
        account_id=account_id,
        account_name=account_name,
        user_id=f"admin-web:{login}",
        user_name=login,
        is_admin=True,
    )
