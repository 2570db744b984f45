"""EBS volumes on this node: the CC's AttachVolume/DetachVolume, as libvirt network disks (protocol iscsi, or rbd
for a zone keeping its volumes in Ceph: rbd_disks.py).

QEMU's own iSCSI initiator opens the volume's target on the storage host with the initiator name the CC made for
this attachment (the target's ACL admits that name only); the guest sees a virtio disk whose serial is the volume
id. The attachment is recorded before libvirt is asked (with its disk XML), and a repeated call finds the disk in
the domain, so the CC can simply send it again after a crash. libvirt's test driver cannot hot-plug: there the
record is the whole attachment (the simulated hypervisor keeps no disks either).
"""

from __future__ import annotations

import asyncio
import logging
import re
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

import aiosqlite
import defusedxml.ElementTree as SafeET
import libvirt

from common.ceph import CephSettings
from common.hostcmd import CommandFailed, Runner, SubprocessRunner
from common.ids import is_id, normalize
from common.messages.cc_nc import BootVolume
from common.messages.storage import IscsiTarget, NodeAttachment, NodeAttachRequest, NodeDetachRequest
from common.rpc import RpcError
from services.node_controller.domain import iscsi_disk
from services.node_controller.hypervisor import Hypervisor, HypervisorError
from services.node_controller.rbd_disks import RbdSetupError, check_target, node_auth, rbd_disk

if TYPE_CHECKING:  # the instance manager's records (instances.py), read here
    from services.node_controller.instances import Instance

log = logging.getLogger("koala.nc.volumes")
DETACH_POLLS = 75  # x 0.2 s: how long a guest has to release a disk before the CC is told to ask again
_IQN = re.compile(r"^iqn\.\d{4}-\d{2}\.[a-z0-9.-]+(:[a-z0-9.:-]+)?$")
_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}$")
_DEVICE = re.compile(r"^/dev/(sd|xvd|vd)([b-z])$")
LOGIN_TIMEOUT = 20.0  # seconds for the login check of a migrating guest's volume


def disk_xml(request: NodeAttachRequest, target: str) -> str:
    assert request.target is not None
    disk = iscsi_disk(None, request.target, normalize(request.volume_id), target, "virtio")
    return ET.tostring(disk, encoding="unicode")


def valid_target(target: IscsiTarget) -> bool:
    return bool(_IQN.match(target.iqn) and _IQN.match(target.initiator) and _HOST.match(target.host))


def _disks(domain_xml: str) -> dict[str, str]:
    """target dev -> serial ('' when none) of a domain's disks."""
    root = SafeET.fromstring(domain_xml)
    found = {}
    for disk in root.findall("devices/disk"):
        target = disk.find("target")
        if target is not None:
            serial = disk.find("serial")
            found[target.get("dev", "")] = serial.text if serial is not None and serial.text else ""
    return found


def _disk_element(domain_xml: str, volume_id: str) -> str | None:
    root = SafeET.fromstring(domain_xml)
    for disk in root.findall("devices/disk"):
        serial = disk.find("serial")
        if serial is not None and serial.text == volume_id:
            return ET.tostring(disk, encoding="unicode")
    return None


class Volumes:
    def __init__(
        self,
        db: aiosqlite.Connection,
        hv: Hypervisor,
        flavour: str,
        instances: dict[str, Instance],
        ceph: CephSettings | None = None,
    ):
        self.db, self.hv, self.flavour, self.instances = db, hv, flavour, instances
        self.live = flavour in ("kvm", "qemu")
        self.ceph = ceph  # this node's Ceph client, for volumes kept in RBD
        # Where this node's QEMU opens iSCSI targets from (its guests' network namespace in tests): the login check.
        self.runner: Runner = SubprocessRunner(timeout=LOGIN_TIMEOUT)

    async def _rbd_disk_xml(self, request: NodeAttachRequest, target: str) -> str:
        """The disk of a volume kept in Ceph, authenticated with this node's key (a libvirt secret)."""
        assert request.rbd is not None
        try:
            user, uuid = await node_auth(self.ceph, self.hv, self.live)
            disk = rbd_disk(request.rbd, normalize(request.volume_id), target, user, uuid)
        except RbdSetupError as err:
            raise RpcError(409, "StorageUnavailable", str(err)) from None
        except HypervisorError as err:
            raise RpcError(500, "AttachFailed", f"libvirt secret: {err}") from None
        return ET.tostring(disk, encoding="unicode")

    def _check(self, request: NodeAttachRequest | NodeDetachRequest) -> tuple[str, str]:
        if not is_id(request.instance_id, "i"):
            raise RpcError(400, "InvalidInstanceID.Malformed", f"{request.instance_id[:20]!r} is not an instance id")
        if not is_id(request.volume_id, "vol"):
            raise RpcError(400, "InvalidVolumeID.Malformed", f"{request.volume_id[:20]!r} is not a volume id")
        return normalize(request.instance_id), normalize(request.volume_id)

    async def _record(self, volume_id: str) -> aiosqlite.Row | None:
        async with self.db.execute("SELECT * FROM volume_attachments WHERE volume_id = ?", (volume_id,)) as cursor:
            return await cursor.fetchone()

    async def _domain_xml(self, instance_id: str) -> str:
        return await self.hv.call(lambda conn: conn.lookupByName(instance_id).XMLDesc(0))

    async def attach(self, request: NodeAttachRequest) -> NodeAttachment:
        instance_id, volume_id = self._check(request)
        t = request.target
        if t is not None and not valid_target(t):
            raise RpcError(400, "InvalidParameterValue", "malformed iSCSI target")
        if request.rbd is not None:
            try:
                check_target(request.rbd)
            except RbdSetupError as err:
                raise RpcError(400, "InvalidParameterValue", str(err)) from None
        device = _DEVICE.match(request.device)
        if device is None:
            raise RpcError(400, "InvalidParameterValue", f"invalid device {request.device[:32]!r}")
        inst = self.instances.get(instance_id)
        if inst is None:
            raise RpcError(404, "InvalidInstanceID.NotFound", f"no instance {instance_id} on this node")
        if inst.state != "Extant":
            raise RpcError(409, "IncorrectInstanceState", f"{instance_id} is {inst.state}, not Extant")
        record = await self._record(volume_id)
        if record is not None and record["instance_id"] != instance_id:
            raise RpcError(409, "VolumeInUse", f"{volume_id} is attached to {record['instance_id']} here")
        used: dict[str, str] = {}
        if self.live:
            used = _disks(await self._domain_xml(instance_id))
            if volume_id in used.values():  # already plugged (a repeated call)
                target = next(dev for dev, serial in used.items() if serial == volume_id)
                return NodeAttachment(instance_id=instance_id, volume_id=volume_id, device=target, attached=True)
        if record is not None and not self.live:
            return NodeAttachment(instance_id=instance_id, volume_id=volume_id, device=record["target"], attached=True)
        async with self.db.execute("SELECT target FROM volume_attachments WHERE instance_id = ?", (instance_id,)) as c:
            used.update({row[0]: "" for row in await c.fetchall()})
        letters = "bcdefghijklmnopqrstuvwxyz"
        start = letters.index(device.group(2))
        free = [f"vd{x}" for x in letters[start:] + letters[:start] if f"vd{x}" not in used]
        if not free:
            raise RpcError(409, "AttachmentLimitExceeded", f"{instance_id} has no free disk slot")
        target = free[0]
        xml = disk_xml(request, target) if t is not None else await self._rbd_disk_xml(request, target)
        await self.db.execute(
            "INSERT OR REPLACE INTO volume_attachments(volume_id, instance_id, target, disk_xml) VALUES (?, ?, ?, ?)",
            (volume_id, instance_id, target, xml),
        )
        await self.db.commit()  # written before libvirt is asked
        if self.live:
            try:
                await self.hv.call(
                    lambda conn: conn.lookupByName(instance_id).attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                )
            except HypervisorError as err:
                await self._forget(volume_id)
                raise RpcError(500, "AttachFailed", f"libvirt: {err}") from None
        source = t.iqn if t is not None else f"rbd {request.rbd.pool}/{request.rbd.image}" if request.rbd else ""
        log.info("%s: %s plugged in as %s (%s)", instance_id, volume_id, target, source)
        return NodeAttachment(instance_id=instance_id, volume_id=volume_id, device=target, attached=True)

    async def _forget(self, volume_id: str) -> None:
        await self.db.execute("DELETE FROM volume_attachments WHERE volume_id = ?", (volume_id,))
        await self.db.commit()

    async def detach(self, request: NodeDetachRequest) -> NodeAttachment:
        instance_id, volume_id = self._check(request)
        inst = self.instances.get(instance_id)
        if inst is None:
            await self._forget(volume_id)
            raise RpcError(404, "InvalidInstanceID.NotFound", f"no instance {instance_id} on this node")
        if self.live and inst.state != "Teardown":
            try:
                element = _disk_element(await self._domain_xml(instance_id), volume_id)
                if element is not None:
                    await self.hv.call(
                        lambda conn: conn.lookupByName(instance_id).detachDeviceFlags(
                            element, libvirt.VIR_DOMAIN_AFFECT_LIVE
                        )
                    )
                    # The guest lets go of a PCI disk in its own time: only then may its export go away.
                    for _ in range(DETACH_POLLS):
                        if _disk_element(await self._domain_xml(instance_id), volume_id) is None:
                            break
                        await asyncio.sleep(0.2)
                    else:
                        raise RpcError(409, "DetachPending", f"{instance_id} has not released {volume_id} yet")
            except HypervisorError as err:
                if err.code != libvirt.VIR_ERR_NO_DOMAIN:
                    raise RpcError(500, "DetachFailed", f"libvirt: {err}") from None
        await self._forget(volume_id)
        log.info("%s: %s unplugged", instance_id, volume_id)
        return NodeAttachment(instance_id=instance_id, volume_id=volume_id, attached=False)

    # --- volumes of a guest migrating here (services/node_controller/migration.py) --------------------------------
    async def prepare_incoming(
        self, instance_id: str, requests: list[NodeAttachRequest], boot: list[BootVolume]
    ) -> dict[str, str]:
        """The disks of the volumes a guest migrating here has (hot-plugged `requests`, and `boot` ones), as this node
        opens them: each iSCSI target logged in to once with this node's initiator name (the export must admit it
        before the guest moves), each RBD image with this node's own libvirt secret. The hot-plugged ones are
        recorded (their guest device is learnt from the domain when it arrived: settle_incoming). volume id ->
        <disk> XML."""
        disks: dict[str, str] = {}
        for volume in boot:
            as_request = NodeAttachRequest(instance_id=instance_id, volume_id=volume.volume_id, device=volume.device,
                                           target=volume.target, rbd=volume.rbd)  # fmt: skip
            disks[normalize(volume.volume_id)] = await self._incoming_disk(as_request)
        for request in requests:
            if normalize(request.instance_id) != instance_id:
                raise RpcError(400, "InvalidParameterValue", f"{request.volume_id[:20]!r} is for another instance")
            _, volume_id = self._check(request)
            xml = await self._incoming_disk(request)
            record = await self._record(volume_id)
            if record is not None and record["instance_id"] != instance_id:
                raise RpcError(409, "VolumeInUse", f"{volume_id} is attached to {record['instance_id']} here")
            await self.db.execute(
                "INSERT OR REPLACE INTO volume_attachments(volume_id, instance_id, target, disk_xml)"
                " VALUES (?, ?, '', ?)",
                (volume_id, instance_id, xml),
            )
            disks[volume_id] = xml
        await self.db.commit()  # written before the guest arrives
        return disks

    async def _incoming_disk(self, request: NodeAttachRequest) -> str:
        """The <disk> of a volume as this node opens it (the iSCSI target logged in to first); its device is the
        guest's, taken from the domain when it arrived."""
        self._check(request)
        if request.target is not None:
            if not valid_target(request.target):
                raise RpcError(400, "InvalidParameterValue", "malformed iSCSI target")
            await self._login(request.target)
            return disk_xml(request, "vdz")
        if request.rbd is not None:
            try:
                check_target(request.rbd)
            except RbdSetupError as err:
                raise RpcError(400, "InvalidParameterValue", str(err)) from None
            return await self._rbd_disk_xml(request, "vdz")
        raise RpcError(400, "InvalidParameterValue", f"{request.volume_id[:20]}: no iSCSI target nor RBD image")

    async def _login(self, target: IscsiTarget) -> None:
        """Log in to the target once with its initiator name and read the LUN's size (qemu-img, through QEMU's own
        iSCSI initiator, as the guest's QEMU will): a node the export does not admit fails here, before the move."""
        opts = (
            f"driver=iscsi,transport=tcp,portal={target.host}:{target.port},target={target.iqn},lun={target.lun},"
            f"initiator-name={target.initiator}"
        )  # the names are checked (valid_target): no commas
        try:
            await self.runner.run(["qemu-img", "info", "--output=json", "--image-opts", opts])
        except CommandFailed as err:
            said = (err.stderr or "").strip().splitlines()
            reason = said[-1] if said else f"exit status {err.code}"
            raise RpcError(409, "VolumeUnreachable", f"{target.iqn}: this node cannot log in: {reason}") from None
        except OSError as err:
            raise RpcError(500, "VolumeUnreachable", f"qemu-img: {err.strerror or err}") from None

    async def settle_incoming(self, instance_id: str, domain_xml: str) -> None:
        """The guest arrived: its volumes' records take the devices and disks its domain has here."""
        query = "SELECT volume_id FROM volume_attachments WHERE instance_id = ?"
        async with self.db.execute(query, (instance_id,)) as cursor:
            volume_ids = [row[0] for row in await cursor.fetchall()]
        devices = {serial: dev for dev, serial in _disks(domain_xml).items() if serial}
        for volume_id in volume_ids:
            element = _disk_element(domain_xml, volume_id)
            if volume_id in devices and element is not None:
                await self.db.execute(
                    "UPDATE volume_attachments SET target = ?, disk_xml = ? WHERE volume_id = ?",
                    (devices[volume_id], element, volume_id),
                )
        await self.db.commit()

    async def forget_instance(self, instance_id: str) -> None:
        """The guest left this node (or never arrived): its volumes are no longer attached here."""
        await self.db.execute("DELETE FROM volume_attachments WHERE instance_id = ?", (instance_id,))
        await self.db.commit()
