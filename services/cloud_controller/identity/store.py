"""Accounts, users, access keys and user certificates: the cloud's identity authority.

Resources belong to accounts (EC2's 12-digit owner id); users act inside their account. The administrators'
account is `eucalyptus` (as in Eucalyptus), created at first start with a user `admin`. Access-key lookups, on
every EC2 request, are served from memory; every change clears that cache (only this process writes).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import string
import time
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from common import pki
from common.database import Row, Transaction
from common.messages.identity import Principal
from services.cloud_controller.database import Database
from services.cloud_controller.ec2.auth import Credential
from services.cloud_controller.ec2.errors import Ec2Error

log = logging.getLogger("koala.clc.identity")

ADMIN_ACCOUNT = "eucalyptus"
ADMIN_USER = "admin"
_ACCOUNT_NAME = re.compile(r"^[a-z0-9][a-z0-9.@_-]{0,62}$")
_USER_NAME = re.compile(r"^[A-Za-z0-9+=,.@_-]{1,64}$")
_KEY_ALPHABET = string.ascii_uppercase + string.digits
# Letters and digits only: a secret that began with "-" (token_urlsafe's alphabet) reads as an option to every
# command-line parser it is handed to (`koala upload-bundle -s SECRET`, ec2-api-tools' -W), one key in 32.
_SECRET_ALPHABET = string.ascii_letters + string.digits
SECRET_LENGTH = 40  # as AWS's; 40 of 62 symbols is 238 bits
MAX_KEYS_PER_USER = 2  # as IAM


class IdentityError(Ec2Error):
    pass


@dataclass(frozen=True)
class AccessKey:
    access_key_id: str
    user_id: str
    enabled: bool
    created_at: float


_PRINCIPAL_SQL = (
    "SELECT a.account_id, a.name AS account_name, a.is_admin, a.enabled AS account_enabled, u.user_id, u.name AS"
    " user_name, u.enabled AS user_enabled FROM users u JOIN accounts a ON a.account_id = u.account_id"
)


_KEY_SQL = (
    "SELECT k.access_key_id, k.secret_key, k.enabled AS key_enabled, p.* FROM access_keys k"
    f" JOIN ({_PRINCIPAL_SQL}) p ON p.user_id = k.user_id"
)


def _credential(row: Row) -> Credential:
    """An access key's row (_KEY_SQL) -> its secret and principal (not enabled when the key, user or account is
    not)."""
    principal = _principal(row)
    return Credential(row["secret_key"], principal, bool(row["key_enabled"]) and principal.enabled)


def _principal(row: Row) -> Principal:
    return Principal(
        account_id=row["account_id"],
        account_name=row["account_name"],
        user_id=row["user_id"],
        user_name=row["user_name"],
        is_admin=bool(row["is_admin"]),
        enabled=bool(row["account_enabled"]) and bool(row["user_enabled"]),
    )


KEY_CACHE_ENTRIES = 10000  # access keys remembered by `lookup` (the cache is emptied when it holds more)


class IdentityStore:
    def __init__(self, db: Database, pki_dir: pki.PkiDir):
        self.db = db
        self.pki_dir = pki_dir
        self._keys: dict[str, Credential] = {}

    def _changed(self) -> None:
        self._keys.clear()

    # --- lookups ------------------------------------------------------------------------------------------
    async def load_keys(self) -> int:
        """Put the access keys (as many as the lookup cache holds) in the lookup cache at start-up, so that the
        first request of each caller after a start does not wait on the database; how many were loaded."""
        rows = await self.db.fetchall(f"{_KEY_SQL} LIMIT ?", (KEY_CACHE_ENTRIES,))
        for row in rows:
            self._keys[row["access_key_id"]] = _credential(row)
        return len(rows)

    async def lookup(self, access_key_id: str) -> Credential | None:
        """The secret and principal for an access key id (disabled keys and users come back not enabled)."""
        found = self._keys.get(access_key_id)
        if found is not None:
            return found
        row = await self.db.fetchone(f"{_KEY_SQL} WHERE k.access_key_id = ?", (access_key_id,))
        if row is None:
            return None
        found = _credential(row)
        if len(self._keys) > KEY_CACHE_ENTRIES:
            self._keys.clear()
        self._keys[access_key_id] = found
        return found

    async def principal(self, user_id: str) -> Principal | None:
        row = await self.db.fetchone(f"{_PRINCIPAL_SQL} WHERE u.user_id = ?", (user_id,))
        return _principal(row) if row else None

    async def user_by_name(self, account: str, user_name: str) -> Principal | None:
        """`account` is an account id or name."""
        row = await self.db.fetchone(
            f"{_PRINCIPAL_SQL} WHERE (a.account_id = ? OR a.name = ?) AND u.name = ?", (account, account, user_name)
        )
        return _principal(row) if row else None

    async def account_admin(self, account: str) -> Principal | None:
        """The account's `admin` user (its first user if there is none), by account id or name."""
        rows = await self.db.fetchall(
            f"{_PRINCIPAL_SQL} WHERE a.account_id = ? OR a.name = ? ORDER BY u.name != ?, u.created_at",
            (account, account, ADMIN_USER),
        )
        return _principal(rows[0]) if rows else None

    async def admin_account_id(self) -> str | None:
        row = await self.db.fetchone("SELECT account_id FROM accounts WHERE name = ?", (ADMIN_ACCOUNT,))
        return row["account_id"] if row else None

    async def accounts(self) -> list[dict[str, Any]]:
        rows = await self.db.fetchall("SELECT * FROM accounts ORDER BY name")
        return [dict(row) for row in rows]

    async def users(self, account_id: str) -> list[Principal]:
        rows = await self.db.fetchall(f"{_PRINCIPAL_SQL} WHERE a.account_id = ? ORDER BY u.name", (account_id,))
        return [_principal(row) for row in rows]

    async def access_keys(self, user_id: str) -> list[AccessKey]:
        rows = await self.db.fetchall(
            "SELECT access_key_id, user_id, enabled, created_at FROM access_keys WHERE user_id = ? ORDER BY created_at",
            (user_id,),
        )
        return [AccessKey(r["access_key_id"], r["user_id"], bool(r["enabled"]), r["created_at"]) for r in rows]

    # --- changes ------------------------------------------------------------------------------------------
    async def create_account(self, name: str, is_admin: bool = False) -> Principal:
        """A new account with its `admin` user; returns that user."""
        if not _ACCOUNT_NAME.match(name):
            raise IdentityError("InvalidParameterValue", f"invalid account name {name[:64]!r}")
        now = time.time()
        async with self.db.transaction() as conn:
            if await _row(conn, "SELECT 1 FROM accounts WHERE name = ?", (name,)):
                raise IdentityError("EntityAlreadyExists", f"account {name} already exists", 409)
            while True:
                account_id = f"{secrets.randbelow(10**12):012d}"
                if account_id[0] != "0" and not await _row(
                    conn, "SELECT 1 FROM accounts WHERE account_id = ?", (account_id,)
                ):
                    break
            await conn.execute(
                "INSERT INTO accounts(account_id, name, is_admin, created_at) VALUES (?, ?, ?, ?)",
                (account_id, name, int(is_admin), now),
            )
            user_id = _new_user_id()
            await conn.execute(
                "INSERT INTO users(user_id, account_id, name, created_at) VALUES (?, ?, ?, ?)",
                (user_id, account_id, ADMIN_USER, now),
            )
        self._changed()
        log.info("created account %s (%s)", name, account_id)
        return Principal(
            account_id=account_id, account_name=name, user_id=user_id, user_name=ADMIN_USER, is_admin=is_admin
        )

    async def create_user(self, account: str, name: str) -> Principal:
        if not _USER_NAME.match(name):
            raise IdentityError("InvalidParameterValue", f"invalid user name {name[:64]!r}")
        async with self.db.transaction() as conn:
            row = await _row(
                conn, "SELECT account_id FROM accounts WHERE account_id = ? OR name = ?", (account, account)
            )
            if row is None:
                raise IdentityError("NoSuchEntity", f"no account {account[:64]!r}", 404)
            if await _row(conn, "SELECT 1 FROM users WHERE account_id = ? AND name = ?", (row[0], name)):
                raise IdentityError("EntityAlreadyExists", f"user {name} already exists", 409)
            user_id = _new_user_id()
            await conn.execute(
                "INSERT INTO users(user_id, account_id, name, created_at) VALUES (?, ?, ?, ?)",
                (user_id, row[0], name, time.time()),
            )
        self._changed()
        log.info("created user %s in account %s", name, row[0])
        found = await self.principal(user_id)
        assert found is not None
        return found

    async def set_user_enabled(self, user_id: str, enabled: bool) -> None:
        if await self.db.execute("UPDATE users SET enabled = ? WHERE user_id = ?", (int(enabled), user_id)) == 0:
            raise IdentityError("NoSuchEntity", f"no user {user_id[:64]!r}", 404)
        self._changed()

    async def create_access_key(self, user_id: str) -> tuple[str, str]:
        """(access key id, secret key). The secret is shown once, to the caller."""
        async with self.db.transaction() as conn:
            if not await _row(conn, "SELECT 1 FROM users WHERE user_id = ?", (user_id,)):
                raise IdentityError("NoSuchEntity", f"no user {user_id[:64]!r}", 404)
            counted = await _row(conn, "SELECT COUNT(*) FROM access_keys WHERE user_id = ?", (user_id,))
            count = counted[0] if counted else 0
            if count >= MAX_KEYS_PER_USER:
                raise IdentityError("LimitExceeded", f"a user has at most {MAX_KEYS_PER_USER} access keys", 409)
            access_key_id = "AKI" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(17))
            secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(SECRET_LENGTH))
            await conn.execute(
                "INSERT INTO access_keys(access_key_id, user_id, secret_key, created_at) VALUES (?, ?, ?, ?)",
                (access_key_id, user_id, secret, time.time()),
            )
        self._changed()
        log.info("created access key %s for user %s", access_key_id, user_id)
        return access_key_id, secret

    async def set_access_key_enabled(self, access_key_id: str, enabled: bool) -> None:
        changed = await self.db.execute(
            "UPDATE access_keys SET enabled = ? WHERE access_key_id = ?", (int(enabled), access_key_id)
        )
        if changed == 0:
            raise IdentityError("NoSuchEntity", f"no access key {access_key_id[:64]!r}", 404)
        self._changed()
        log.info("access key %s %s", access_key_id, "enabled" if enabled else "disabled")

    async def delete_access_key(self, access_key_id: str) -> None:
        if await self.db.execute("DELETE FROM access_keys WHERE access_key_id = ?", (access_key_id,)) == 0:
            raise IdentityError("NoSuchEntity", f"no access key {access_key_id[:64]!r}", 404)
        self._changed()
        log.info("deleted access key %s", access_key_id)

    # --- certificates ---------------------------------------------------------------------------------------
    async def issue_certificate(self, user_id: str) -> tuple[str, str]:
        """A new X.509 certificate (RSA, role user, CN = user id) signed by the cloud CA: (cert PEM, key PEM)."""
        if await self.principal(user_id) is None:
            raise IdentityError("NoSuchEntity", f"no user {user_id[:64]!r}", 404)

        def make() -> tuple[x509.Certificate, bytes]:
            ca_cert, ca_key = self.pki_dir.ca()
            cert, key = pki.issue(ca_cert, ca_key, user_id, "user")
            return cert, pki.key_pem(key)

        try:
            cert, key_pem = await asyncio.get_running_loop().run_in_executor(None, make)
        except pki.PkiError as err:
            raise IdentityError("ServiceUnavailable", f"cannot issue certificates here: {err}", 503) from None
        cert_pem = pki.cert_pem(cert).decode()
        await self.db.execute(
            "INSERT INTO certificates(certificate_id, user_id, pem, created_at) VALUES (?, ?, ?, ?)",
            (pki.fingerprint(cert), user_id, cert_pem, time.time()),
        )
        log.info("issued certificate %s for user %s", pki.fingerprint(cert)[:16], user_id)
        return cert_pem, key_pem.decode()

    async def certificates(self, user_id: str) -> list[dict[str, Any]]:
        rows = await self.db.fetchall(
            "SELECT certificate_id, active, created_at FROM certificates WHERE user_id = ? ORDER BY created_at",
            (user_id,),
        )
        return [dict(row) for row in rows]

    async def account_certificates(self, account_id: str) -> list[str]:
        """The PEM of the account's active user certificates, newest first (at most 64): who may have bundled an
        image the account registers."""
        rows = await self.db.fetchall(
            "SELECT c.pem FROM certificates c JOIN users u ON u.user_id = c.user_id"
            " WHERE u.account_id = ? AND c.active = 1 ORDER BY c.created_at DESC LIMIT 64",
            (account_id,),
        )
        return [row["pem"] for row in rows]

    async def resolve_certificate(self, cert_pem: str) -> tuple[bool, Principal] | None:
        """(active, principal) for a certificate this CLC issued, by its exact DER bytes; None if unknown."""
        try:
            cert = x509.load_pem_x509_certificate(cert_pem.encode())
        except ValueError:
            return None
        digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
        row = await self.db.fetchone("SELECT user_id, active FROM certificates WHERE certificate_id = ?", (digest,))
        if row is None:
            return None
        principal = await self.principal(row["user_id"])
        if principal is None:
            return None
        return bool(row["active"]) and principal.enabled, principal


async def _row(conn: Transaction, sql: str, args: tuple[Any, ...]) -> Row | None:
    async with conn.execute(sql, args) as cursor:
        return await cursor.fetchone()


def _new_user_id() -> str:
    return "AID" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(18))
