"""The signed identity interface (common/messages/identity.py): Walrus resolves access keys, certificates and
accounts here; the CLC itself and admin tools may call it too."""

from __future__ import annotations

from common.messages.identity import (
    ResolveAccessKeyRequest,
    ResolveAccessKeyResponse,
    ResolveAccountRequest,
    ResolveAccountResponse,
    ResolveCertificateRequest,
    ResolveCertificateResponse,
)
from common.rpc import Caller, RpcServer
from services.cloud_controller.identity.store import IdentityStore

ROLES = frozenset({"walrus", "clc", "admin"})


def install(rpc: RpcServer, store: IdentityStore) -> None:
    async def resolve_access_key(message: ResolveAccessKeyRequest, caller: Caller) -> ResolveAccessKeyResponse:
        found = await store.lookup(message.access_key_id)
        if found is None:
            return ResolveAccessKeyResponse(found=False)
        return ResolveAccessKeyResponse(
            found=True, enabled=found.enabled, secret_access_key=found.secret, principal=found.principal
        )

    async def resolve_certificate(message: ResolveCertificateRequest, caller: Caller) -> ResolveCertificateResponse:
        found = await store.resolve_certificate(message.certificate_pem)
        if found is None:
            return ResolveCertificateResponse(found=False)
        active, principal = found
        return ResolveCertificateResponse(found=True, active=active, principal=principal)

    async def resolve_account(message: ResolveAccountRequest, caller: Caller) -> ResolveAccountResponse:
        principal = await store.account_admin(message.account_id)
        if principal is None:
            return ResolveAccountResponse(found=False)
        return ResolveAccountResponse(found=True, principal=principal)

    rpc.add("ResolveAccessKey", resolve_access_key, ROLES, ResolveAccessKeyRequest)
    rpc.add("ResolveCertificate", resolve_certificate, ROLES, ResolveCertificateRequest)
    rpc.add("ResolveAccount", resolve_account, ROLES, ResolveAccountRequest)
