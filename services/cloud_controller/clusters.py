"""The CLC's cluster registry: zones and their Cluster Controllers, from KOALA_CLUSTERS and from RegisterCluster.

`ClusterRegistry.zones` is one live dict (zone -> CC URL), changed in place on every registration, so holders
of it (the compute engine's ClusterClient, the peer monitor through `peer_list`) see registered clusters
without a restart. Configured clusters win over registered ones of the same zone and cannot be deregistered
here. Signed operations (role admin): RegisterCluster, DeregisterCluster, DescribeClusters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from common.messages.clusters import (
    ClusterInfo,
    DeregisterClusterRequest,
    DescribeClustersResponse,
    RegisterClusterRequest,
)
from common.messages.service import DescribeServiceResponse
from common.rpc import Caller, Empty, PeerUnreachable, RpcError, RpcServer
from services.cloud_controller.compute.store import LIVE_STATES
from services.cloud_controller.database import Database

if TYPE_CHECKING:
    from services.cloud_controller.service import CloudControllerService

log = logging.getLogger("koala.clc.clusters")
ROLES = frozenset({"admin"})
VERIFY_TIMEOUT = 5.0
Listener = Callable[[str, str | None], Any]  # (zone, url or None when removed)


def normalize_url(url: str) -> str:
    """http(s)://HOST:PORT, nothing else: the CC's base URL as the RPC client wants it."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as err:
        raise RpcError(400, "InvalidUrl", f"{url!r}: {err}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        raise RpcError(400, "InvalidUrl", f"{url!r}: expected http://HOST:PORT")
    if parts.username or parts.password or parts.path.strip("/") or parts.query or parts.fragment:
        raise RpcError(400, "InvalidUrl", f"{url!r}: only scheme, host and port are allowed")
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class Registered:
    zone: str
    url: str
    cc_id: str


class ClusterRegistry:
    def __init__(self, db: Database, configured: dict[str, str]):
        self.db = db
        self.configured = {zone: url.rstrip("/") for zone, url in configured.items()}
        self.registered: dict[str, Registered] = {}
        self.zones: dict[str, str] = {}
        self.listeners: list[Listener] = []  # e.g. the compute engine, to poll a new zone

    async def load(self) -> None:
        rows = await self.db.fetchall("SELECT zone, url, cc_id FROM clusters ORDER BY zone")
        self.registered = {row["zone"]: Registered(row["zone"], row["url"], row["cc_id"]) for row in rows}
        self.zones.clear()
        self.zones.update({r.zone: r.url for r in self.registered.values()})
        self.zones.update(self.configured)

    def source(self, zone: str) -> Literal["config", "registered"]:
        return "config" if zone in self.configured else "registered"

    async def register(self, zone: str, url: str, cc_id: str) -> None:
        if zone in self.configured:
            raise RpcError(409, "ClusterInConfig", f"zone {zone} is set in KOALA_CLUSTERS; change it there")
        current = self.registered.get(zone)
        if current is not None and current.url != url:
            raise RpcError(409, "ClusterExists", f"zone {zone} is served by {current.url}; deregister it first")
        other = next((z for z, u in self.zones.items() if u == url and z != zone), None)
        if other is not None:
            raise RpcError(409, "ClusterExists", f"{url} already serves zone {other}")
        await self.db.execute(
            "INSERT INTO clusters(zone, url, cc_id, registered_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(zone) DO UPDATE SET cc_id = excluded.cc_id",
            (zone, url, cc_id, time.time()),
        )
        self.registered[zone] = Registered(zone, url, cc_id)
        if current is None:
            self.zones[zone] = url
            log.info("cluster %s registered at %s", zone, url)
            self._notify(zone, url)

    async def deregister(self, zone: str) -> None:
        if zone in self.configured:
            raise RpcError(409, "ClusterInConfig", f"zone {zone} is set in KOALA_CLUSTERS; remove it there")
        if zone not in self.registered:
            raise RpcError(404, "ClusterNotFound", f"no cluster {zone}")
        marks = ", ".join("?" for _ in LIVE_STATES)
        row = await self.db.fetchone(
            f"SELECT COUNT(*) AS n FROM instances WHERE zone = ? AND state IN ({marks})", (zone, *LIVE_STATES)
        )
        if row is not None and row["n"]:
            raise RpcError(409, "ClusterInUse", f"zone {zone} still has {row['n']} live instances")
        await self.db.execute("DELETE FROM clusters WHERE zone = ?", (zone,))
        del self.registered[zone]
        self.zones.pop(zone, None)
        log.info("cluster %s deregistered", zone)
        self._notify(zone, None)

    def _notify(self, zone: str, url: str | None) -> None:
        for listener in self.listeners:
            try:
                listener(zone, url)
            except Exception:
                log.exception("cluster listener failed for %s", zone)


def install(rpc: RpcServer, registry: ClusterRegistry, clc: CloudControllerService) -> None:
    """The signed operations; `clc` gives the RPC client and the peer monitor (re-pointed on every change)."""

    def refresh_peers() -> None:
        clc.monitor.set_peers(clc.peer_list())

    async def register(message: RegisterClusterRequest, caller: Caller) -> ClusterInfo:
        url = normalize_url(message.url)
        cc_id = ""
        try:
            answer = await clc.client.call(
                url, "DescribeService", None, DescribeServiceResponse, timeout=VERIFY_TIMEOUT, expect_role="cc"
            )
            cc_id = answer.id
        except PeerUnreachable as err:
            if not message.force:
                raise RpcError(502, "ClusterUnreachable", f"{err.message} (force to register anyway)") from None
        except RpcError as err:  # answered, but not as a CC of this cloud
            raise RpcError(502, "ClusterRefused", f"{url}: {err.code}: {err.message}") from None
        await registry.register(message.zone, url, cc_id)
        refresh_peers()
        return describe_one(message.zone)

    async def deregister(message: DeregisterClusterRequest, caller: Caller) -> Empty:
        await registry.deregister(message.zone)
        refresh_peers()
        return Empty()

    def describe_one(zone: str) -> ClusterInfo:
        url = registry.zones[zone]
        peer = clc.monitor.peers.get(url)
        registered = registry.registered.get(zone)
        status = peer.status if peer is not None else None
        return ClusterInfo(
            zone=zone,
            url=url,
            source=registry.source(zone),
            cc_id=(status.id if status and status.id else "") or (registered.cc_id if registered else ""),
            reachable=bool(status and status.reachable),
            last_error=status.last_error if status else None,
        )

    async def describe(_: object, caller: Caller) -> DescribeClustersResponse:
        return DescribeClustersResponse(clusters=[describe_one(zone) for zone in sorted(registry.zones)])

    rpc.add("RegisterCluster", register, ROLES, RegisterClusterRequest)
    rpc.add("DeregisterCluster", deregister, ROLES, DeregisterClusterRequest)
    rpc.add("DescribeClusters", describe, ROLES)
