"""Node Controller settings (eucalyptus.conf names where Eucalyptus had them)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from common.ceph import CephSettings
from common.config import ServiceConfig
from services.node_controller.network import NodeVnetSettings

Hypervisor = Literal["xen", "kvm", "qemu", "test"]
DEFAULT_URIS = {"xen": "xen:///system", "kvm": "qemu:///system", "qemu": "qemu:///system", "test": "test:///default"}


class NodeControllerConfig(NodeVnetSettings, CephSettings, ServiceConfig):  # VNET_* keys: network.py
    NC_PORT: int = Field(8775, ge=1, le=65535, description="Port of the NC's internal API.")
    KOALA_CC_URL: str = Field("", description="The Cluster Controller's base URL (state pushes).")
    KOALA_WALRUS_URL: str = Field("", description="Walrus's base URL, where images are fetched (GetDecryptedImage).")
    HYPERVISOR: Hypervisor = Field(
        "test",
        description="xen (xen:///system, PV kernel+ramdisk or HVM), kvm or qemu (qemu:///system; qemu is software "
        "emulation), test (libvirt's test driver, test:///default).",
    )
    KOALA_LIBVIRT_URI: str = Field(
        "", description="libvirt URI overriding the HYPERVISOR default (e.g. test:///path/node.xml)."
    )
    KOALA_NC_LIBVIRT_WAIT: float = Field(
        20.0, ge=0, description="Seconds to wait for libvirt at start before serving NotReady while retrying."
    )
    INSTANCE_PATH: Path | None = Field(
        None, description="Where instance directories and the image cache live (default: KOALA_STATE_DIR/instances)."
    )
    NC_CACHE_SIZE: int = Field(4096, ge=0, description="Size of the node-local image cache in MB (LRU).")
    MAX_CORES: int = Field(0, ge=0, description="Cap on cores offered to instances (0: what the host has).")
    MAX_MEM: int = Field(0, ge=0, description="Cap on memory offered to instances in MB (0: host memory).")
    MAX_DISK: int = Field(0, ge=0, description="Cap on instance disk in GB (0: free space of INSTANCE_PATH).")
    CPU_ALLOCATION_RATIO: float = Field(
        16.0,
        gt=0,
        le=1024,
        description="Virtual cores offered per host core (Nova's cpu_allocation_ratio; 16: a 2-core node runs 32 "
        "one-core guests). Applied before MAX_CORES.",
    )
    RAM_ALLOCATION_RATIO: float = Field(
        1.5, gt=0, le=64, description="Guest memory offered per MB of host memory (Nova's ram_allocation_ratio)."
    )
    DISK_ALLOCATION_RATIO: float = Field(
        1.0,
        gt=0,
        le=64,
        description="Instance disk offered per GB free in INSTANCE_PATH (Nova's disk_allocation_ratio; above 1 "
        "bets on qcow2 overlays staying small).",
    )
    SWAP_SIZE: int = Field(512, ge=0, description="Swap disk of every instance in MB (0: none).")
    CONCURRENT_DISK_OPS: int = Field(4, ge=1, description="How many instances may build disks at the same time.")
    MANUAL_INSTANCES_CLEANUP: bool = Field(False, description="Keep instance files at teardown (for debugging).")
    INSTANCE_TIMEOUT: float = Field(
        300.0, gt=0, description="Seconds an instance may stay Pending (staging + booting) before it is condemned."
    )
    KOALA_NC_MONITOR_SECONDS: float = Field(5.0, gt=0, description="Period of the monitor's safety-net sweep.")
    KOALA_NC_REBOOT_GRACE_SECONDS: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="RebootInstance: how long a guest has to restart after the ACPI request "
        "before the NC resets it (a guest that ignores ACPI is reset, as EC2 hard-reboots).",
    )
    KOALA_NC_FORGET_SECONDS: float = Field(180.0, ge=0, description="How long Teardown instances stay reported.")
    KOALA_NC_CONFIG_DRIVE: bool = Field(True, description="Attach a NoCloud config drive (cidata ISO) to guests.")
    KOALA_NC_KERNEL_CMDLINE: str = Field(
        "", description="Extra kernel command line for guests booted with kernel+ramdisk."
    )
    KOALA_NC_DISK_DRIVER: Literal["", "overlay", "copy"] = Field(
        "", description="Root disk: qcow2 overlay on the cached image or a full copy ('' picks per hypervisor)."
    )

    KOALA_NC_POWEROFF_COMMAND: str = Field(
        "", description="Command PowerDown runs once the node is idle (e.g. 'systemctl poweroff'); '' only disables."
    )
    KOALA_NC_MIGRATION_URI: str = Field(
        "",
        description="How other nodes' libvirtds reach this node's for live migration, over TLS with the cloud's "
        "certificates (e.g. qemu+tls://10.0.0.5/system; see cli/libvirt_tls.py). '' offers no live migration.",
    )
    KOALA_NC_MIGRATION_ADDRESS: str = Field(
        "", description="Address QEMU's incoming migration streams listen on here ('' : the host of the URI)."
    )
    KOALA_NC_MIGRATION_PKI: str = Field(
        "",
        description="Directory with cacert.pem, clientcert.pem, clientkey.pem this node's libvirtd presents to the "
        "target's (libvirt's pkipath); '' uses libvirt's default /etc/pki/libvirt.",
    )
    KOALA_NC_MIGRATION_TLS: bool = Field(
        True, description="Carry QEMU's memory and disk streams over TLS too (qemu.conf migrate_tls_x509_cert_dir)."
    )
    KOALA_NC_MIGRATION_BANDWIDTH: int = Field(
        0, ge=0, le=100000, description="The most MiB/s a live migration from this node may use (0: no limit)."
    )
    KOALA_NC_MIGRATION_MAX_DOWNTIME_MS: int = Field(
        300, ge=1, le=60000, description="The longest pause live migration may give the guest at the switch-over."
    )

    @property
    def port(self) -> int:
        return self.NC_PORT

    @property
    def libvirt_uri(self) -> str:
        return self.KOALA_LIBVIRT_URI or DEFAULT_URIS[self.HYPERVISOR]

    @property
    def instance_path(self) -> Path:
        return self.INSTANCE_PATH or (self.KOALA_STATE_DIR / "instances")
