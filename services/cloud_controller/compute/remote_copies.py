"""Copies of local images in remote clouds (bursting): a remote zone's CC uploads a local image to its remote cloud
on demand, and removes that copy when the image is deregistered here.

The CLC tells each remote zone at once (ForgetImages, in the background: DeregisterImage does not wait on a remote
cloud). A CC that missed it (down then, or the CLC stopped first) asks at its start and now and then which of its
images are still registered (KnownImages, role cc): the image table is the record of what must go, so nothing
else is written here."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from common.messages.clc_cc import ImageIdsRequest, ImageIdsResponse
from common.rpc import Caller, PeerUnreachable, RpcError
from services.cloud_controller.compute.store import Image

if TYPE_CHECKING:
    from services.cloud_controller.compute.engine import Compute
    from services.cloud_controller.service import CloudControllerService

log = logging.getLogger("koala.clc.compute")


def install(clc: CloudControllerService, compute: Compute) -> None:
    def deregistered(image: Image) -> None:
        zones = sorted(zone for zone, capacity in compute.admission.zones.items() if capacity.remote)
        if zones:
            compute.background(tell(compute, zones, image.image_id))

    async def known(message: ImageIdsRequest, caller: Caller) -> ImageIdsResponse:
        return ImageIdsResponse(image_ids=[i for i in message.image_ids if i in compute.store.images])

    compute.images.on_deregister.append(deregistered)
    clc.rpc.add("KnownImages", known, {"cc"}, ImageIdsRequest)


async def tell(compute: Compute, zones: list[str], image_id: str) -> None:
    for zone in zones:
        try:
            await compute.cc.forget_images(zone, [image_id])
        except (RpcError, PeerUnreachable) as err:  # the CC asks again at its start (KnownImages)
            log.warning("zone %s not told that %s is deregistered: %s", zone, image_id, err)
