"""Access keys -> (secret, principal), resolved through the CLC's identity interface and cached briefly.

A local JSON credentials file (KOALA_WALRUS_CREDENTIALS_FILE) may also hold keys; it is meant for Walrus's own
tests until the CLC answers ResolveAccessKey, and is read first when configured:
    {"AKID": {"secret_access_key": "...", "principal": {"account_id": "...", "account_name": "...",
              "user_id": "...", "user_name": "...", "is_admin": false}}}
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from common.messages.identity import (
    Principal,
    ResolveAccessKeyRequest,
    ResolveAccessKeyResponse,
    ResolveAccountRequest,
    ResolveAccountResponse,
)
from common.rpc import PeerUnreachable, RpcClient, RpcError
from services.walrus.s3.errors import S3Error

log = logging.getLogger("koala.walrus.identity")
CACHE_ENTRIES = 10_000
NEGATIVE_TTL = 2.0


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret: str
    principal: Principal


class KeyResolver:
    def __init__(self, client: RpcClient, clc_url: str, ttl: float, credentials_file: Path | None):
        self.client, self.clc_url, self.ttl = client, clc_url, ttl
        self.credentials_file = credentials_file
        self._cache: dict[str, tuple[float, Credentials | None]] = {}
        self._file_stamp: tuple[float, int] | None = None
        self._file_keys: dict[str, Credentials] = {}
        self._accounts: dict[str, tuple[float, str | None]] = {}  # account id -> (expiry, display name)

    def _load_file(self) -> dict[str, Credentials]:
        if self.credentials_file is None:
            return {}
        try:
            stat = os.stat(self.credentials_file)
        except OSError:
            return {}
        stamp = (stat.st_mtime, stat.st_size)
        if stamp != self._file_stamp:
            try:
                data = json.loads(Path(self.credentials_file).read_text())
                self._file_keys = {
                    key: Credentials(key, entry["secret_access_key"], Principal.model_validate(entry["principal"]))
                    for key, entry in data.items()
                }
            except (OSError, ValueError, KeyError, TypeError) as err:
                log.error("cannot read credentials file %s: %s", self.credentials_file, err)
                self._file_keys = {}
            self._file_stamp = stamp
        return self._file_keys

    async def resolve(self, access_key: str) -> Credentials:
        """The key's credentials; InvalidAccessKeyId for an unknown or disabled key."""
        now = time.monotonic()
        cached = self._cache.get(access_key)
        if cached is not None and cached[0] > now:
            found = cached[1]
        else:
            found = self._load_file().get(access_key)
            if found is None:
                found = await self._ask_clc(access_key)
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            # an unknown key is remembered briefly only: it may be one the CLC is about to hand out
            self._cache[access_key] = (now + (self.ttl if found else min(self.ttl, NEGATIVE_TTL)), found)
        if found is None or not found.principal.enabled:
            raise S3Error("InvalidAccessKeyId", AWSAccessKeyId=access_key)
        return found

    async def _ask_clc(self, access_key: str) -> Credentials | None:
        if len(access_key) > 128 or not access_key:
            return None
        try:
            answer = await self.client.call(
                self.clc_url,
                "ResolveAccessKey",
                ResolveAccessKeyRequest(access_key_id=access_key),
                ResolveAccessKeyResponse,
                timeout=5,
                idempotent=True,
                expect_role="clc",
            )
        except PeerUnreachable as err:
            log.warning("cannot resolve access key: CLC unreachable (%s)", err)
            raise S3Error("ServiceUnavailable", "The identity service is unreachable; try again.") from None
        except RpcError as err:
            if err.code == "UnknownOperation":
                return None
            log.warning("cannot resolve access key: %s", err)
            raise S3Error("ServiceUnavailable", "The identity service failed; try again.") from None
        if not answer.found or answer.principal is None:
            return None
        principal = answer.principal
        if not answer.enabled:
            principal = principal.model_copy(update={"enabled": False})
        return Credentials(access_key, answer.secret_access_key, principal)

    async def account_name(self, account_id: str) -> str | None:
        """The display name of an account (its canonical user id in S3 terms), or None if there is none."""
        now = time.monotonic()
        cached = self._accounts.get(account_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        name = next(
            (c.principal.account_name for c in self._load_file().values() if c.principal.account_id == account_id),
            None,
        )
        if name is None and 0 < len(account_id) <= 64:
            name = await self._ask_clc_account(account_id)
        if len(self._accounts) >= CACHE_ENTRIES:
            self._accounts.clear()
        self._accounts[account_id] = (now + (self.ttl if name else min(self.ttl, NEGATIVE_TTL)), name)
        return name

    async def _ask_clc_account(self, account_id: str) -> str | None:
        try:
            answer = await self.client.call(
                self.clc_url,
                "ResolveAccount",
                ResolveAccountRequest(account_id=account_id),
                ResolveAccountResponse,
                timeout=5,
                idempotent=True,
                expect_role="clc",
            )
        except PeerUnreachable as err:
            log.warning("cannot resolve account: CLC unreachable (%s)", err)
            raise S3Error("ServiceUnavailable", "The identity service is unreachable; try again.") from None
        except RpcError as err:
            if err.code == "UnknownOperation":
                return None
            log.warning("cannot resolve account: %s", err)
            raise S3Error("ServiceUnavailable", "The identity service failed; try again.") from None
        if not answer.found or answer.principal is None:
            return None
        return answer.principal.account_name
