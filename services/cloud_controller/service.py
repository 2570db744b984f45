"""The Cloud Controller: the EC2 Query API, identity, images, admission control, instance metadata."""

from __future__ import annotations

import gc
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from common import pki
from common.service import Service
from services.cloud_controller import actions, admin, ebs
from services.cloud_controller import clusters as cluster_registry
from services.cloud_controller.compute import setup as compute_setup
from services.cloud_controller.compute.bundle_tasks import BundleTasks
from services.cloud_controller.compute.engine import Compute
from services.cloud_controller.config import CloudControllerConfig
from services.cloud_controller.database import Database, open_clc_database
from services.cloud_controller.ebs.engine import Ebs
from services.cloud_controller.ec2 import model as ec2_model
from services.cloud_controller.ec2 import xml as ec2_xml
from services.cloud_controller.ec2.auth import Credential
from services.cloud_controller.ec2.frontend import Frontend
from services.cloud_controller.identity import admin_rpc as identity_admin_rpc
from services.cloud_controller.identity import bootstrap
from services.cloud_controller.identity import rpc as identity_rpc
from services.cloud_controller.identity.store import IdentityStore
from services.cloud_controller.leases import setup as leases_setup
from services.cloud_controller.leases.scheduler import LeaseScheduler
from services.cloud_controller.standby import start_when_leader

if TYPE_CHECKING:
    from common.database.leadership import Leadership

log = logging.getLogger("koala.clc")


class CloudControllerService(Service):
    role = "clc"
    config_class = CloudControllerConfig
    config: CloudControllerConfig
    render_http_error = staticmethod(ec2_xml.http_error)
    # The parts, built once by on_start (before the port opens) and handed to their consumers.
    db: Database
    identity_store: IdentityStore
    clusters: cluster_registry.ClusterRegistry
    compute: Compute
    ebs: Ebs
    leases: LeaseScheduler
    bundle_tasks: BundleTasks
    cloud_cert_pem: str
    leadership: Leadership | None = None  # with PostgreSQL: this process's hold on the active role (standby.py)

    def __init__(self, config: CloudControllerConfig):
        super().__init__(config)
        self._stops: list[Callable[[], Awaitable[None]]] = []  # what on_start started, stopped in reverse
        self.pki_dir = pki.PkiDir(config.KOALA_PKI_DIR)
        # The EC2 Query API (routes must exist before the app starts); actions register themselves on import.
        actions.load_all()
        self.ec2 = Frontend(self, self._lookup_access_key)
        self.ec2.install(self.app)
        self.admin = admin.install(self)  # the /admin/ web pages

    async def start(self) -> web.AppRunner:
        """With PostgreSQL, one CLC of several is active; until this one is, it answers 503 (standby.py)."""
        if self.config.KOALA_DATABASE_URL:
            return await start_when_leader(self)
        return await super().start()

    async def _lookup_access_key(self, access_key_id: str) -> Credential | None:
        return await self.identity_store.lookup(access_key_id)

    async def on_start(self) -> None:
        self.db = await open_clc_database(self.config.KOALA_STATE_DIR, self.config.KOALA_DATABASE_URL, self.leadership)
        if self.leadership is not None:
            self._stops.append(self.leadership.release)  # after the database is closed
        self._stops.append(self.db.close)
        log.info("state in %s", self.db.engine)
        self.identity_store = IdentityStore(self.db, self.pki_dir)
        identity_rpc.install(self.rpc, self.identity_store)
        identity_admin_rpc.install(self.rpc, self.identity_store, self)
        # Configured and registered clusters; `self.clusters.zones` is the live zone -> CC URL map.
        self.clusters = cluster_registry.ClusterRegistry(self.db, self.config.clusters())
        await self.clusters.load()
        cluster_registry.install(self.rpc, self.clusters, self)
        # Images, instances, admission, addresses; NotifyInstances (role cc) and the metadata routes.
        self.compute = await compute_setup.install(self)
        self._stops.append(self.compute.stop)
        self.ebs = await ebs.install(self)  # volumes and snapshots (Elastic Block Store)
        self._stops.append(self.ebs.stop)
        # The slot table (capacity reservations, spot requests) beside admission control.
        self.leases = await leases_setup.install(self)
        self._stops.append(lambda: leases_setup.uninstall(self.leases))
        self.cloud_cert_pem = (self.pki_dir.path / pki.CLOUD_CERT_FILE).read_text()
        # BundleInstance: nodes bundle, this CLC signs the manifests with the cloud key (compute/bundle_tasks.py).
        self.bundle_tasks = BundleTasks(
            self.db,
            self.compute.cc,
            self.pki_dir.path / pki.CLOUD_KEY_FILE,
            self.cloud_cert_pem,
            self.config.s3_url(),
        )
        await self.bundle_tasks.start()
        self._stops.append(self.bundle_tasks.stop)
        await bootstrap.ensure_admin(
            self.identity_store,
            self.config.KOALA_STATE_DIR,
            self.config.ec2_url(),
            self.config.s3_url(),
            self.config.KOALA_REGION,
            self.cloud_cert_pem,
        )
        log.info("%d access keys loaded", await self.identity_store.load_keys())
        # What start-up made (botocore's EC2 model, the modules, the loaded records) mostly lives as long as the
        # process: out of the garbage collector's way. Each full collection walked it all again, about 20 ms on a
        # quiet machine, inside whichever request it fell in (a DescribeInstances of 10,000 during a big launch).
        # A frozen record that ends is still freed by reference counting (records hold no cycles).
        ec2_model.service_model()
        gc.freeze()

    async def on_stop(self) -> None:
        while self._stops:
            await self._stops.pop()()

    def listen_hosts(self) -> list[str]:
        return [self.config.KOALA_BIND, *self.config.KOALA_METADATA_BIND.split()]

    def listen_sockets(self) -> list[socket.socket]:
        fd = self.config.KOALA_METADATA_FD
        return [socket.socket(fileno=fd)] if fd >= 0 else []

    def peer_list(self) -> list[tuple[str, str]]:
        peers = [(self.config.KOALA_WALRUS_URL, "walrus")]
        peers += [(url, "cc") for url in self.clusters.zones.values()]
        return peers
