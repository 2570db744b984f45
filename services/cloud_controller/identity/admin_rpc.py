"""Identity administration over signed internal RPC (role admin): accounts, users, access keys, credentials.
Secrets appear only in the answers to the admin who asked, never in logs."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from common.messages.identity import Principal
from common.messages.identity_admin import (
    AccessKeyInfo,
    AccessKeyRef,
    AccountInfo,
    CreateAccountRequest,
    CreateUserRequest,
    CredentialsResponse,
    Done,
    ListAccountsResponse,
    NewAccessKey,
    SetAccessKeyEnabledRequest,
    SetUserEnabledRequest,
    UserInfo,
    UserRef,
    UserResponse,
)
from common.rpc import Caller, Empty, RpcError, RpcServer
from services.cloud_controller.identity.bootstrap import user_credentials
from services.cloud_controller.identity.store import IdentityError, IdentityStore

if TYPE_CHECKING:
    from services.cloud_controller.service import CloudControllerService

ROLES = frozenset({"admin"})


def install(rpc: RpcServer, store: IdentityStore, clc: CloudControllerService) -> None:
    async def user(ref: UserRef) -> Principal:
        found = await store.user_by_name(ref.account, ref.user)
        if found is None:
            raise RpcError(404, "NoSuchEntity", f"no user {ref.user!r} in account {ref.account!r}")
        return found

    def guard(handler: Callable[[Any], Awaitable[BaseModel]]) -> Callable[[Any, Caller], Awaitable[BaseModel]]:
        async def run(message: Any, caller: Caller) -> BaseModel:
            try:
                return await handler(message)
            except IdentityError as err:
                raise RpcError(err.status, err.code, err.message) from None

        return run

    async def create_account(message: CreateAccountRequest) -> NewAccessKey:
        principal = await store.create_account(message.name)
        key_id, secret = await store.create_access_key(principal.user_id)
        return NewAccessKey(principal=principal, access_key_id=key_id, secret_access_key=secret)

    async def create_user(message: CreateUserRequest) -> UserResponse:
        return UserResponse(principal=await store.create_user(message.account, message.name))

    async def create_access_key(message: UserRef) -> NewAccessKey:
        principal = await user(message)
        key_id, secret = await store.create_access_key(principal.user_id)
        return NewAccessKey(principal=principal, access_key_id=key_id, secret_access_key=secret)

    async def set_access_key_enabled(message: SetAccessKeyEnabledRequest) -> Done:
        await store.set_access_key_enabled(message.access_key_id, message.enabled)
        return Done()

    async def delete_access_key(message: AccessKeyRef) -> Done:
        await store.delete_access_key(message.access_key_id)
        return Done()

    async def set_user_enabled(message: SetUserEnabledRequest) -> Done:
        await store.set_user_enabled((await user(message)).user_id, message.enabled)
        return Done()

    async def list_accounts(message: Empty) -> ListAccountsResponse:
        answer = []
        for account in await store.accounts():
            users = []
            for principal in await store.users(account["account_id"]):
                keys = [
                    AccessKeyInfo(access_key_id=k.access_key_id, enabled=k.enabled, created_at=k.created_at)
                    for k in await store.access_keys(principal.user_id)
                ]
                users.append(UserInfo(principal=principal, access_keys=keys))
            answer.append(
                AccountInfo(
                    account_id=account["account_id"],
                    name=account["name"],
                    is_admin=bool(account["is_admin"]),
                    users=users,
                )
            )
        return ListAccountsResponse(accounts=answer)

    async def get_credentials(message: UserRef) -> CredentialsResponse:
        principal = await user(message)
        config = clc.config
        creds = await user_credentials(
            store, principal.user_id, config.ec2_url(), config.s3_url(), config.KOALA_REGION, clc.cloud_cert_pem
        )
        return CredentialsResponse(
            principal=principal, zip_base64=base64.b64encode(creds.zip()).decode(), eucarc=creds.eucarc(None)
        )

    rpc.add("CreateAccount", guard(create_account), ROLES, CreateAccountRequest)
    rpc.add("CreateUser", guard(create_user), ROLES, CreateUserRequest)
    rpc.add("CreateAccessKey", guard(create_access_key), ROLES, UserRef)
    rpc.add("SetAccessKeyEnabled", guard(set_access_key_enabled), ROLES, SetAccessKeyEnabledRequest)
    rpc.add("DeleteAccessKey", guard(delete_access_key), ROLES, AccessKeyRef)
    rpc.add("SetUserEnabled", guard(set_user_enabled), ROLES, SetUserEnabledRequest)
    rpc.add("ListAccounts", guard(list_accounts), ROLES, Empty)
    rpc.add("GetCredentials", guard(get_credentials), ROLES, UserRef)
