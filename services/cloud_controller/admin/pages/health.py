"""Service health for the dashboard: a live DescribeService of each peer (Walrus, each CC), and through each CC's
answer the state of its NCs as that CC sees them."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from common.messages.service import DescribeServiceResponse
from common.rpc import PeerUnreachable, RpcError
from common.service import VERSION

if TYPE_CHECKING:
    from services.cloud_controller.service import CloudControllerService

TIMEOUT = 3.0


@dataclass
class Health:
    role: str
    url: str
    id: str = ""
    reachable: bool = False
    version: str = ""
    uptime: float = 0.0
    error: str = ""
    children: list[Health] = field(default_factory=list)


async def _ask(service: CloudControllerService, url: str, role: str) -> Health:
    try:
        answer = await service.client.call(
            url, "DescribeService", None, DescribeServiceResponse, timeout=TIMEOUT, expect_role=role
        )
    except (RpcError, PeerUnreachable) as err:
        return Health(role=role, url=url, error=err.message)
    except TimeoutError:
        return Health(role=role, url=url, error=f"no answer within {TIMEOUT:.0f} s")
    children = [
        Health(
            role=peer.role,
            url=peer.url,
            id=peer.id or "",
            reachable=peer.reachable,
            error=peer.last_error or "",
            uptime=(time.time() - peer.last_seen) if peer.last_seen else 0.0,
        )
        for peer in answer.peers
        if peer.role == "nc"
    ]
    return Health(
        role=role,
        url=url,
        id=answer.id,
        reachable=True,
        version=answer.version,
        uptime=answer.uptime,
        children=children,
    )


async def report(service: CloudControllerService) -> list[Health]:
    own = Health(
        role=service.role,
        url="(this service)",
        id=service.identity.id,
        reachable=True,
        version=VERSION,
        uptime=time.time() - service.started_at,
    )
    peers = [(peer.url, peer.role) for peer in service.monitor.peers.values()]
    answers = await asyncio.gather(*(_ask(service, url, role) for url, role in peers))
    return [own, *answers]
