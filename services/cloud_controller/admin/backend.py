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


def identity(service: Any) -> Any:
    store = getattr(service, "identity_store", None)
    if store is None:
        raise Unavailable("The identity store is not running on this Cloud Controller.")
    return store


async def admin_principal(service: Any, login: str) -> Principal:
    """Who an admin page acts as: the cloud administrators' account (is_admin), named after the web login."""
    account_id, account_name = "", "eucalyptus"
    store = getattr(service, "identity_store", None)
    if store is not None:
        account_id = await store.admin_account_id() or ""
    return Principal(
        account_id=account_id,
        account_name=account_name,
        user_id=f"admin-web:{login}",
        user_name=login,
        is_admin=True,
    )


def images(service: Any) -> Any:
    """The image registry (compute.images.Images), wherever the service keeps it."""
    registry = getattr(service, "images", None)
    if registry is None:
        registry = getattr(getattr(service, "compute", None), "images", None)
    if registry is None:
        raise Unavailable("The image registry is not running on this Cloud Controller.")
    return registry


def database(service: Any) -> Any:
    db = getattr(service, "db", None)
    if db is None:
        raise Unavailable("The Cloud Controller's database is not open.")
    return db
