"""Wiring of a remote zone into the CC service: its EC2 client, store and notifier, checked and started."""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes

from common import pki
from services.cluster_controller.config import ClusterControllerConfig
from services.cluster_controller.notifier import Notifier
from services.cluster_controller.remote import credentials
from services.cluster_controller.remote.ec2 import Ec2Client, load_model
from services.cluster_controller.remote.store import RemoteStore
from services.cluster_controller.remote.uploads import RemoteImages
from services.cluster_controller.remote.zone import RemoteZone

if TYPE_CHECKING:
    from services.cluster_controller.service import ClusterControllerService


def default_prefix(config: ClusterControllerConfig) -> str:
    """`koala-` and 10 hex digits naming this cloud (its CA) and zone: what this zone creates remotely, and only
    that, carries it, so two clouds or two zones sharing a remote account never touch each other's resources."""
    ca = pki.load_cert(pki.PkiDir(config.KOALA_PKI_DIR).ca_path)
    digest = hashlib.sha256(ca.fingerprint(hashes.SHA256()) + config.KOALA_ZONE.encode()).hexdigest()
    return f"koala-{digest[:10]}"


async def open_zone(service: ClusterControllerService) -> RemoteZone:
    """Build the remote zone of a CC service, check its configuration against the remote, and start it.
    ConfigError for bad credentials or image map; a remote that does not answer is polled until it does."""
    config = service.config
    secret = credentials.load(config.KOALA_REMOTE_CREDENTIALS)
    model = await asyncio.to_thread(load_model)
    ec2 = Ec2Client(
        config.KOALA_REMOTE_ENDPOINT,
        config.KOALA_REMOTE_REGION,
        secret,
        model,
        config.KOALA_REMOTE_TIMEOUT,
        config.KOALA_REMOTE_CONCURRENCY,
    )
    config.KOALA_STATE_DIR.mkdir(parents=True, exist_ok=True)
    store = await RemoteStore.open(config.KOALA_STATE_DIR / "remote.db")
    notifier = Notifier(service.client, config.KOALA_CLC_URL, config.KOALA_ZONE)
    prefix = config.KOALA_REMOTE_PREFIX or default_prefix(config)
    images = RemoteImages(config, ec2, store, prefix, service.client, secret)
    zone = RemoteZone(config, ec2, store, notifier, prefix, images)
    try:
        await images.open()
        await zone.check()
        await zone.start()
    except BaseException:
        await ec2.close()
        await store.close()
        raise
    return zone
