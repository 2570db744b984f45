"""Run inside the operator's namespace: DescribeService of each URL with the koala-admin certificate, as JSON."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from common import pki
from common.messages.service import DescribeServiceResponse
from common.rpc import PeerUnreachable, RpcClient, RpcError
from common.signing import Identity, TrustStore


async def main(pki_dir: Path, urls: list[str]) -> dict:
    directory = pki.PkiDir(pki_dir)
    identity = Identity.from_files(directory.cert_path("koala-admin"), directory.key_path("koala-admin"))
    client = RpcClient(identity, TrustStore(pki.load_cert(directory.ca_path)), timeout=3, retries=1)
    answers: dict = {}
    try:
        for url in urls:
            try:
                answer = await client.call(url, "DescribeService", None, DescribeServiceResponse)
                answers[url] = answer.model_dump()
            except (RpcError, PeerUnreachable) as err:
                answers[url] = {"error": str(err)}
    finally:
        await client.close()
    return answers


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(Path(sys.argv[1]), sys.argv[2:]))))
