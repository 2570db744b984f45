"""The internal calls about remote copies of images, ForgetImages (CLC -> a remote zone's CC) and KnownImages
(CC -> CLC), refuse what ImageIdsRequest does not allow (more than 10,000 ids, an id longer than 32 characters,
anything but a list of strings) with the internal calls' JSON error, never a 500; the largest request allowed is
answered, and so is the next good call."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from common import pki
from common.messages.clc_cc import Ack, ImageIdsResponse
from common.rpc import RpcClient, RpcError
from common.signing import Identity, TrustStore
from tests.harness import Cloud

# Bodies ImageIdsRequest refuses, and which field its error names.
BAD = {
    "too many": [f"emi-{n:08x}" for n in range(10_001)],
    "too long": ["emi-" + "0" * 29],
    "not a list": "emi-00000001",
    "not strings": [1, 2],
    "null": None,
    "an object": {"emi-00000001": True},
}


class AnyBody(BaseModel):
    """Whatever JSON a caller puts in image_ids, signed and sent as a real caller does."""

    image_ids: Any


def call(cloud: Cloud, role: str, url: str, operation: str, body: BaseModel, answer: type[BaseModel]) -> BaseModel:
    """`operation` at `url`, signed by a certificate of `role` that the cloud's CA issued."""
    subject = f"bad-input-{role}"
    cloud.aio.pki.ensure(subject, role)
    identity = Identity.from_files(cloud.aio.pki.cert_path(subject), cloud.aio.pki.key_path(subject))

    async def run() -> BaseModel:
        client = RpcClient(identity, TrustStore(pki.load_cert(cloud.aio.pki.ca_path)))
        try:
            return await client.call(url, operation, body, answer)
        finally:
            await client.close()

    return asyncio.run(run())


def refused(cloud: Cloud, role: str, url: str, operation: str, image_ids: Any) -> RpcError:
    with pytest.raises(RpcError) as caught:
        call(cloud, role, url, operation, AnyBody(image_ids=image_ids), Ack)
    return caught.value


@pytest.mark.parametrize("case", sorted(BAD))
def test_forget_images_refuses_bad_input(world, case: str) -> None:
    error = refused(world.local, "clc", world.cc.url, "ForgetImages", BAD[case])
    assert (error.status, error.code) == (400, "InvalidRequest") and "image_ids" in error.message, error


@pytest.mark.parametrize("case", sorted(BAD))
def test_known_images_refuses_bad_input(world, case: str) -> None:
    error = refused(world.local, "cc", world.local.url("clc"), "KnownImages", BAD[case])
    assert (error.status, error.code) == (400, "InvalidRequest") and "image_ids" in error.message, error


def test_both_answer_the_largest_request_and_stay_up(world) -> None:
    largest = [world.local_image] + [f"emi-{n:028x}" for n in range(9_999)]  # 10,000 ids, 32 characters each
    assert len(largest) == 10_000 and max(map(len, largest)) == 32
    known = call(world.local, "cc", world.local.url("clc"), "KnownImages", AnyBody(image_ids=largest), ImageIdsResponse)
    assert isinstance(known, ImageIdsResponse) and known.image_ids == [world.local_image]
    # Ids this zone never uploaded: nothing is removed, the call is acknowledged.
    unknown = [f"emi-{n:028x}" for n in range(10_000)]
    forgot = call(world.local, "clc", world.cc.url, "ForgetImages", AnyBody(image_ids=unknown), Ack)
    assert isinstance(forgot, Ack) and forgot.ok
    assert (
        "internal error in ForgetImages" not in world.cc.log()
        and "internal error in KnownImages" not in world.local.log("clc")
    )
