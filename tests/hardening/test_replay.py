"""A signed internal request captured before a kill -9 and restart is refused after it (the nonce cache lives in
memory), while the services' own calls to the restarted one go on working."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from common import signing
from common.messages.service import DescribeServiceResponse
from common.signing import Identity
from tests.harness import Cloud

PATH = "/internal/DescribeService"
IDS = {"clc": "clc", "walrus": "walrus", "cc": "cc-zone1", "nc": "nc-node1"}


async def _post(url: str, headers: dict[str, str]) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.post(url + PATH, data=b"{}", headers=headers) as response:
        return response.status, json.loads(await response.read())


@pytest.mark.parametrize("role", ["clc", "cc", "nc", "walrus"])
def test_a_request_captured_before_a_restart_is_refused_after_it(module_cloud: Cloud, role: str) -> None:
    cloud = module_cloud
    admin = Identity.from_files(cloud.aio.pki.cert_path("koala-admin"), cloud.aio.pki.key_path("koala-admin"))
    captured = admin.sign_headers("POST", PATH, IDS[role], b"{}")
    captured[signing.HEADER_CERT_PEM] = admin.cert_der_b64
    status, answer = asyncio.run(_post(cloud.url(role), captured))
    assert status == 200, answer
    assert asyncio.run(_post(cloud.url(role), captured))[1]["code"] == "ReplayedNonce"

    cloud.kill(role)
    cloud.start(role)
    status, answer = asyncio.run(_post(cloud.url(role), captured))
    assert (status, answer["code"]) == (401, signing.PREDATES_START)

    # A request signed now is served, and the other services reach the restarted one again.
    fresh = admin.sign_headers("POST", PATH, IDS[role], b"{}")
    fresh[signing.HEADER_CERT_PEM] = admin.cert_der_b64
    status, answer = asyncio.run(_post(cloud.url(role), fresh))
    assert status == 200 and DescribeServiceResponse.model_validate(answer).id == IDS[role]
    answers = cloud.aio.wait_peers(timeout=30)
    assert all(isinstance(a, DescribeServiceResponse) and all(p.reachable for p in a.peers) for a in answers.values())
