"""EBS volumes kept in Ceph (the CC's KOALA_EBS_BACKEND=rbd), as libvirt network disks of protocol rbd: QEMU's own
rbd driver (Debian's qemu-block-extra) opens the image through the monitors the CC names, authenticated as this
node's Ceph client. No kernel module (krbd) and no iSCSI hop are involved.

The node's key comes from its own keyring (KOALA_CEPH_KEYRING, KOALA_CEPH_USER), never from the CC: it is handed
to libvirt once as a private `ceph` secret (its value cannot be read back through libvirt), which the disk XML
names by UUID; QEMU gets it from libvirt as a secret object, never on a command line.
"""

from __future__ import annotations

import asyncio
import base64
import re
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.ceph import CephSettings
from common.messages.storage import RbdTarget

if TYPE_CHECKING:
    from services.node_controller.hypervisor import Hypervisor

SECRET_USAGE = "koala ceph client.{user}"
_KEY = re.compile(r"^\s*key\s*=\s*([A-Za-z0-9+/=]{16,200})\s*$")
_MON = re.compile(r"^([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:]{2,45}\]):(\d{1,5})$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


class RbdSetupError(Exception):
    """The node cannot open Ceph volumes (no key, a malformed target)."""


def read_key(keyring: Path, user: str) -> bytes:
    """The secret of client.`user` in a Ceph keyring file (the raw bytes libvirt wants)."""
    try:
        text = keyring.read_text()
    except OSError as err:
        raise RbdSetupError(f"cannot read the Ceph keyring {keyring}: {err.strerror}") from None
    section = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1].strip()
            continue
        match = _KEY.match(line)
        if match and section == f"client.{user}":
            return base64.b64decode(match.group(1))
    raise RbdSetupError(f"no key for client.{user} in {keyring}")


def check_target(target: RbdTarget) -> list[tuple[str, str]]:
    """The monitors as (host, port); RbdSetupError for anything malformed."""
    if not (_NAME.match(target.pool) and _NAME.match(target.image)):
        raise RbdSetupError("malformed RBD pool or image name")
    monitors = []
    for monitor in target.monitors:
        match = _MON.match(monitor)
        if match is None or not 0 < int(match.group(2)) < 65536:
            raise RbdSetupError(f"malformed monitor address {monitor[:60]!r}")
        monitors.append((match.group(1).strip("[]"), match.group(2)))
    return monitors


def ensure_secret(conn: Any, user: str, key: bytes) -> str:
    """Blocking (libvirt's thread): the UUID of this node's libvirt `ceph` secret for client.`user`, defined (or
    updated) with `key`."""
    import libvirt

    usage = SECRET_USAGE.format(user=user)
    try:
        secret = conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_CEPH, usage)
    except libvirt.libvirtError:
        root = ET.Element("secret", {"ephemeral": "no", "private": "yes"})
        ET.SubElement(ET.SubElement(root, "usage", {"type": "ceph"}), "name").text = usage
        secret = conn.secretDefineXML(ET.tostring(root, encoding="unicode"))
    secret.setValue(key)
    return str(secret.UUIDString())


async def node_auth(ceph: CephSettings | None, hv: Hypervisor, live: bool) -> tuple[str, str]:
    """(Ceph user, libvirt secret UUID) this node's RBD disks authenticate with: its key handed to libvirt as a
    private secret. RbdSetupError without a Ceph client; HypervisorError from libvirt. Under libvirt's test driver
    (not `live`: no secrets there) a fixed UUID stands for the secret."""
    if ceph is None or ceph.KOALA_CEPH_CONF is None:
        raise RbdSetupError("this node has no Ceph client (KOALA_CEPH_CONF)")
    user = ceph.KOALA_CEPH_USER
    usage = SECRET_USAGE.format(user=user)
    if not live:
        return user, str(uuid.uuid5(uuid.NAMESPACE_URL, usage))
    keyring = ceph.KOALA_CEPH_KEYRING or ceph.KOALA_CEPH_CONF.parent / f"ceph.client.{user}.keyring"
    key = await asyncio.to_thread(read_key, keyring, user)
    return user, await hv.call(lambda conn: ensure_secret(conn, user, key))


def rbd_disk(target: RbdTarget, serial: str, dev: str, user: str, secret_uuid: str, bus: str = "virtio") -> ET.Element:
    """The <disk> of a volume kept in Ceph, as the guest's disk `dev` with the volume id as serial."""
    monitors = check_target(target)
    disk = ET.Element("disk", {"type": "network", "device": "disk"})
    ET.SubElement(disk, "driver", {"name": "qemu", "type": "raw", "cache": "writeback", "discard": "unmap"})
    source = ET.SubElement(disk, "source", {"protocol": "rbd", "name": f"{target.pool}/{target.image}"})
    for host, port in monitors:
        ET.SubElement(source, "host", {"name": host, "port": port})
    auth = ET.SubElement(disk, "auth", {"username": user})
    ET.SubElement(auth, "secret", {"type": "ceph", "uuid": secret_uuid})
    ET.SubElement(disk, "target", {"dev": dev, "bus": bus})
    ET.SubElement(disk, "serial").text = serial
    return disk
