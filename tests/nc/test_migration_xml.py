"""The source's destination XML for a live migration (services/node_controller/migration.py), checked directly on
a domain as the NC renders it: file disks moved to the target's directory and copied, EBS volumes opened with the
target's own initiator and never copied, nothing copied when the directory is shared."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import defusedxml.ElementTree as SafeET

from common.messages.migration import MigrationTarget
from common.messages.storage import IscsiTarget, RbdTarget
from services.node_controller.domain import DiskSpec, DomainSpec, iscsi_disk, render
from services.node_controller.migration import destination_xml
from services.node_controller.rbd_disks import rbd_disk

SOURCE = Path("/srv/a/instances/000000000001/i-0a0b0c0d")
THERE = "/srv/b/instances/000000000001/i-0a0b0c0d"
VOLUME = "vol-0a0b0c0d"
IQN = "iqn.2010-01.org.koala"


def portal(initiator: str) -> IscsiTarget:
    return IscsiTarget(host="10.0.0.1", port=3260, iqn=f"iqn.2010-01.org.koala:zone1.{VOLUME}", lun=1,
                       initiator=initiator)  # fmt: skip


def source_domain() -> str:
    spec = DomainSpec(
        name="i-0a0b0c0d",
        uuid="5f0c7a2e-2b7e-4d7e-9a55-2f0e3c1d4b6a",
        memory_mb=256,
        vcpus=1,
        disks=[
            DiskSpec(SOURCE / "disk", "root", format="qcow2"),
            DiskSpec(SOURCE / "ephemeral", "ephemeral", format="qcow2"),
            DiskSpec(Path(VOLUME), "volume", iscsi=portal(f"{IQN}:node.i-0a0b0c0d.source"), serial=VOLUME),
        ],
        console_log=SOURCE / "console.log",
        owner_id="000000000001",
    )
    return render(spec, "qemu")


def target(shared: bool = False) -> MigrationTarget:
    theirs = iscsi_disk(None, portal("iqn.2010-01.org.koala:node.i-0a0b0c0d.target"), VOLUME, "vdz", "virtio")
    return MigrationTarget(instance_id="i-0a0b0c0d", instance_dir=THERE, shared=shared,
                           volume_disks={VOLUME: ET.tostring(theirs, encoding="unicode")})  # fmt: skip


def disks(xml: str) -> dict[str, ET.Element]:
    root = SafeET.fromstring(xml)
    return {d.find("target").get("dev"): d for d in root.findall("devices/disk")}  # type: ignore[union-attr]


def test_file_disks_move_and_are_copied_volumes_are_opened_as_the_target_opens_them() -> None:
    before = disks(source_domain())
    xml, copied = destination_xml(source_domain(), SOURCE, target())
    after = disks(xml)
    assert set(after) == set(before)
    volume_dev = next(dev for dev, d in after.items() if d.get("type") == "network")
    assert copied and volume_dev not in copied  # the volume is shared: never copied
    assert all(after[dev].find("source").get("file", "").startswith(THERE + "/") for dev in copied)  # type: ignore
    initiator = after[volume_dev].find("source/initiator/iqn")
    assert initiator is not None and initiator.get("name") == "iqn.2010-01.org.koala:node.i-0a0b0c0d.target"
    assert after[volume_dev].findtext("serial") == VOLUME  # the guest's device and serial stay
    assert len(after[volume_dev].findall("source")) == 1
    assert SOURCE.as_posix() not in xml


def test_nothing_is_copied_from_a_shared_directory() -> None:
    xml, copied = destination_xml(source_domain(), SOURCE, target(shared=True))
    assert copied == []
    initiator = SafeET.fromstring(xml).find("devices/disk/source/initiator/iqn")
    assert initiator is not None and initiator.get("name").endswith(".target")
    log_el = SafeET.fromstring(xml).find("devices/serial/log")
    assert log_el is not None and log_el.get("append") == "on"  # one console log, appended to by the target


def test_an_rbd_volume_takes_the_targets_own_secret() -> None:
    """A volume kept in Ceph: the target's libvirt names its own secret for the node's key (another UUID)."""
    image = RbdTarget(pool="ebs", image=f"zone1.{VOLUME}", monitors=["10.0.0.2:6789"])
    source_secret, target_secret = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
    spec = DomainSpec(
        name="i-0a0b0c0d",
        uuid="5f0c7a2e-2b7e-4d7e-9a55-2f0e3c1d4b6a",
        memory_mb=256,
        vcpus=1,
        disks=[
            DiskSpec(SOURCE / "root.qcow2", "root", format="qcow2"),
            DiskSpec(Path(VOLUME), "volume", rbd=image, rbd_auth=("koala", source_secret), serial=VOLUME),
        ],
        console_log=SOURCE / "console.log",
        owner_id="000000000001",
    )
    theirs = ET.tostring(rbd_disk(image, VOLUME, "vdz", "koala", target_secret), encoding="unicode")
    there = MigrationTarget(instance_id="i-0a0b0c0d", instance_dir=THERE, volume_disks={VOLUME: theirs})
    xml, copied = destination_xml(render(spec, "qemu"), SOURCE, there)
    volume = next(d for d in disks(xml).values() if d.get("type") == "network")
    secret = volume.find("auth/secret")
    assert secret is not None and secret.get("uuid") == target_secret
    assert volume.find("source").get("name") == f"ebs/zone1.{VOLUME}"  # type: ignore[union-attr]
    assert volume.find("target").get("dev") not in copied  # type: ignore[union-attr]
    assert len(copied) == 1
