"""The CLC's identity interface, called by Walrus (role walrus) to authenticate S3 requests and bundles.

Walrus caches answers for a short TTL, so a disabled key or user stops working within that TTL.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class Principal(BaseModel):
    """A user as other services see it. `account_id` is the 12-digit account number (EC2's owner id)."""

    account_id: str
    account_name: str
    user_id: str
    user_name: str
    is_admin: bool = False  # the cloud administrator's account (Eucalyptus's `eucalyptus` account)
    enabled: bool = True


class ResolveAccessKeyRequest(BaseModel):
    access_key_id: str = Field(max_length=128)


class ResolveAccessKeyResponse(BaseModel):
    """`found` false (and the rest empty) for an unknown key; a disabled key comes back with enabled false."""

    found: bool
    enabled: bool = False
    secret_access_key: str = ""
    principal: Principal | None = None


class ResolveCertificateRequest(BaseModel):
    """A user's X.509 certificate (PEM), e.g. the one that signed a bundle manifest."""

    certificate_pem: str = Field(max_length=16384)


class ResolveCertificateResponse(BaseModel):
    found: bool
    active: bool = False
    principal: Principal | None = None


class ResolveAccountRequest(BaseModel):
    account_id: str = Field(max_length=64)


class ResolveAccountResponse(BaseModel):
    found: bool
    principal: Principal | None = None  # the account's admin user
