"""Wires the compute engine into the CLC service: settings from the config, the CC client, Walrus's image
operations, the NotifyInstances operation (role cc), the metadata routes, the polling loops."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from common.messages.clc_cc import Ack, NotifyInstancesRequest
from common.rpc import Caller, RpcError
from services.cloud_controller.compute import admin_rpc, remote_copies
from services.cloud_controller.compute.addresses import parse_pool
from services.cloud_controller.compute.bursting import BurstPolicy
from services.cloud_controller.compute.cc_client import ClusterClient
from services.cloud_controller.compute.engine import Compute, Settings
from services.cloud_controller.compute.netsync import NetworkSync
from services.cloud_controller.compute.walrus import WalrusImages
from services.cloud_controller.metadata import MetadataService

if TYPE_CHECKING:
    from services.cloud_controller.config import CloudControllerConfig
    from services.cloud_controller.service import CloudControllerService

log = logging.getLogger("koala.clc.compute")


def settings_from(config: CloudControllerConfig) -> Settings:
    return Settings(
        default_kernel=config.KOALA_DEFAULT_KERNEL,
        default_ramdisk=config.KOALA_DEFAULT_RAMDISK,
        quota_instances=config.KOALA_QUOTA_INSTANCES,
        quota_cores=config.KOALA_QUOTA_CORES,
        quota_addresses=config.KOALA_QUOTA_ADDRESSES,
        auto_public_ip=config.KOALA_AUTO_PUBLIC_IP,
        network_resources=config.KOALA_NETWORK_RESOURCES,
        addrs_per_net=config.KOALA_ADDRS_PER_NET,
        reservation_timeout=config.KOALA_RESERVATION_TIMEOUT,
        lost_after=config.KOALA_INSTANCE_LOST_SECONDS,
        terminated_visible=config.KOALA_TERMINATED_VISIBLE_SECONDS,
        poll_interval=config.KOALA_CC_POLL_SECONDS,
        burst=BurstPolicy.parse(config.KOALA_BURST_ACCOUNTS, config.KOALA_BURST_VMTYPES),
    )


async def install(clc: CloudControllerService) -> Compute:
    """Create, load and start the compute engine; call from the service's on_start (before the port opens)."""
    zones = clc.clusters.zones
    walrus = WalrusImages(clc.client, clc.config.KOALA_WALRUS_URL, clc.identity_store.account_certificates)
    compute = Compute(
        clc.db,
        ClusterClient(clc.client, zones),
        settings_from(clc.config),
        parse_pool(clc.config.KOALA_PUBLIC_IPS),
        walrus,
    )
    await compute.load()

    def cluster_ids(zone: str) -> set[str]:
        """The certificate ids that may speak for `zone`: cc-<zone>, its registered CC, the CC at its URL."""
        allowed = {f"cc-{zone}"}
        registered = clc.clusters.registered.get(zone)
        if registered is not None and registered.cc_id:
            allowed.add(registered.cc_id)
        url = zones.get(zone, "").rstrip("/")
        peer = clc.monitor.peers.get(url)
        if peer is not None and peer.status.id:
            allowed.add(peer.status.id)
        return allowed

    async def notify(message: NotifyInstancesRequest, caller: Caller) -> Ack:
        if message.zone in zones and caller.id not in cluster_ids(message.zone):
            raise RpcError(403, "WrongCluster", f"{caller.id} does not speak for zone {message.zone}")
        return await compute.reports.notify(message)

    clc.rpc.add("NotifyInstances", notify, {"cc"}, NotifyInstancesRequest)
    admin_rpc.install(clc.rpc, compute.vmtypes, compute.images)
    remote_copies.install(clc, compute)  # remote zones drop their copies of deregistered images
    from services.cloud_controller.actions import instances as instance_actions

    instance_actions.install_prerender(compute)  # instances serialized for DescribeInstances as they change
    if len(compute.store.instances) > 1000:
        compute.background(instance_actions.warm_cache(compute))
    if compute.settings.network_resources != "off":
        install_netsync(clc, compute)
    MetadataService(compute.store, extras=compute.metadata_extras).install(clc.app)
    clc.clusters.listeners.append(compute.poller.zone_changed)
    compute.poller.start()
    compute.background(compute.launcher.resend_unsent())  # launches a dead leader wrote but never sent
    return compute


def install_netsync(clc: CloudControllerService, compute: Compute) -> None:
    """MANAGED modes: security group rules -> the CCs' ConfigureNetwork, at launch and on every rule change."""
    groups = compute.security_groups
    netsync = compute.netsync = NetworkSync(compute, compute.store, compute.cc, compute.networks, groups.rules_by_name)

    async def changed(owner_id: str, group_id: str) -> None:
        name = await groups.name_of(owner_id, group_id)
        if name is None:  # deleted: its name is still known from the reservations that used it
            for reservation in compute.store.reservations.values():
                if reservation.owner_id == owner_id and group_id in reservation.group_ids:
                    name = reservation.groups[reservation.group_ids.index(group_id)]
                    break
        if name is not None:
            await netsync.group_changed(owner_id, name)

    groups.listeners.append(changed)
    clc.clusters.listeners.append(netsync.forget_zone)
