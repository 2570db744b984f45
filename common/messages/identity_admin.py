"""Identity administration on the CLC (role admin, e.g. `koala admin` with the koala-admin certificate):
accounts, users, access keys and credentials. `account` fields take an account id or name."""

from __future__ import annotations

from pydantic import BaseModel, Field

from common.messages.identity import Principal

NAME = Field(min_length=1, max_length=64)


class CreateAccountRequest(BaseModel):
    name: str = NAME


class NewAccessKey(BaseModel):
    principal: Principal
    access_key_id: str
    secret_access_key: str


class CreateUserRequest(BaseModel):
    account: str = NAME
    name: str = NAME


class UserRef(BaseModel):
    account: str = NAME
    user: str = NAME


class UserResponse(BaseModel):
    principal: Principal


class SetUserEnabledRequest(UserRef):
    enabled: bool


class AccessKeyRef(BaseModel):
    access_key_id: str = Field(min_length=1, max_length=128)


class SetAccessKeyEnabledRequest(AccessKeyRef):
    enabled: bool


class AccessKeyInfo(BaseModel):
    access_key_id: str
    enabled: bool
    created_at: float


class UserInfo(BaseModel):
    principal: Principal
    access_keys: list[AccessKeyInfo] = []


class AccountInfo(BaseModel):
    account_id: str
    name: str
    is_admin: bool
    users: list[UserInfo] = []


class ListAccountsResponse(BaseModel):
    accounts: list[AccountInfo]


class CredentialsResponse(BaseModel):
    """A user's credentials zip (base64): eucarc, certificate and private key (new), cloud certificate."""

    principal: Principal
    zip_base64: str
    eucarc: str


class Done(BaseModel):
    ok: bool = True
