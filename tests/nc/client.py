"""A synchronous face on the signed RPC client, for tests: calls run on a loop in a daemon thread."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from common import pki
from common.rpc import RpcClient
from common.signing import Identity, TrustStore

T = TypeVar("T", bound=BaseModel)


class SyncClient:
    def __init__(self, pki_dir: Path, subject_id: str):
        pkidir = pki.PkiDir(pki_dir)
        identity = Identity.from_files(pkidir.cert_path(subject_id), pkidir.key_path(subject_id))
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.client = RpcClient(identity, TrustStore(pki.load_cert(pkidir.ca_path)), timeout=30, retries=1)

    def call(self, url: str, operation: str, message: BaseModel | None, response: type[T]) -> T:
        coro = self.client.call(url, operation, message, response, expect_role="nc")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.client.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
