"""Key pairs: the `key_pairs` table (key_pair_id, owner_id, name, fingerprint, key_type, public_key, created_at).

Keys are generated, parsed and fingerprinted by the actions (`actions/keypairs.py`); this store keeps them and
hands a launch its key pair's OpenSSH public key (`public_key`), which the metadata service serves.
"""

from __future__ import annotations

import time
from typing import Any

from common.database import Row
from common.ids import new_id
from services.cloud_controller.compute.errors import ComputeError
from services.cloud_controller.compute.tags import Tags
from services.cloud_controller.database import Database


class KeyPairs:
    def __init__(self, db: Database, tags: Tags):
        self.db, self.tags = db, tags
        tags.register("key", "key-pair", self.owned, "InvalidKeyPair.NotFound")

    async def owned(self, owner_id: str, ids: list[str]) -> set[str]:
        rows = await self.db.fetchall(
            f"SELECT key_pair_id FROM key_pairs WHERE owner_id = ? AND key_pair_id IN ({','.join('?' * len(ids))})",
            (owner_id, *ids),
        )
        return {row["key_pair_id"] for row in rows}

    async def get(self, owner_id: str, name: str) -> dict[str, Any] | None:
        """The account's key pair `name` (key_pair_id, name, fingerprint, key_type, public_key, created_at)."""
        row = await self.db.fetchone("SELECT * FROM key_pairs WHERE owner_id = ? AND name = ?", (owner_id, name))
        return dict(row) if row else None

    async def public_key(self, owner_id: str, name: str) -> str | None:
        """The OpenSSH public key line of the account's key pair `name`, for a launch and instance metadata."""
        found = await self.get(owner_id, name)
        return found["public_key"] if found else None

    async def of_account(self, owner_id: str) -> list[Row]:
        """The account's key pairs by name."""
        return await self.db.fetchall(
            "SELECT key_pair_id, name, fingerprint, key_type, public_key, created_at FROM key_pairs"
            " WHERE owner_id = ? ORDER BY name",
            (owner_id,),
        )

    async def create(
        self, owner_id: str, name: str, fingerprint: str, key_type: str, public: str, tags: list[tuple[str, Any]]
    ) -> str:
        """Keep a new key pair (with its tags); InvalidKeyPair.Duplicate if the account has one of that name."""
        key_pair_id = new_id("key")
        row = {"key_pair_id": key_pair_id, "owner_id": owner_id, "name": name, "fingerprint": fingerprint,
               "key_type": key_type, "public_key": public, "created_at": time.time()}  # fmt: skip
        duplicate = ComputeError("InvalidKeyPair.Duplicate", f"The keypair '{name}' already exists.")
        await self.tags.insert_named("key_pairs", "key_pair_id", row, "key-pair", tags, duplicate)
        return key_pair_id

    async def find_id(self, owner_id: str, name: str | None = None, key_pair_id: str | None = None) -> str | None:
        """The id of the account's key pair named by id (or else by name); None if there is none."""
        if key_pair_id:
            row = await self.db.fetchone(
                "SELECT key_pair_id FROM key_pairs WHERE owner_id = ? AND key_pair_id = ?", (owner_id, key_pair_id)
            )
        else:
            row = await self.db.fetchone(
                "SELECT key_pair_id FROM key_pairs WHERE owner_id = ? AND name = ?", (owner_id, name)
            )
        return row["key_pair_id"] if row else None

    async def delete(self, key_pair_id: str) -> None:
        await self.db.execute("DELETE FROM key_pairs WHERE key_pair_id = ?", (key_pair_id,))
        await self.tags.forget([key_pair_id])
