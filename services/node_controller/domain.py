"""One domain model, rendered as libvirt domain XML for each hypervisor flavour.

Flavours: `xen` paravirtual (kernel + ramdisk, sda1 root / sda2 ephemeral / sda3 swap, as Eucalyptus), `xen`
HVM (no kernel: hvmloader boots the root disk), `kvm` and `qemu` (domain types kvm / qemu, virtio disks, the
serial console logged to a file by virtlogd), and `test` (libvirt's test driver). Every domain carries a
<metadata> element in Koala's namespace: that is how the NC tells its own domains from others', and how a
domain that looks like ours but has no record is recognised after a restart.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import defusedxml.ElementTree as SafeET

from common.messages.storage import IscsiTarget, RbdTarget
from services.node_controller.rbd_disks import rbd_disk

KOALA_NS = "https://koala.invalid/xmlns/nc/1"
KOALA_PREFIX = "koala"
XEN_HVMLOADER = "/usr/lib/xen/boot/hvmloader"
# A virtio-blk queue of 64 descriptors: QEMU then offers the guest 62 segments per request (queue size - 2), so the
# guest's requests stay within the 256 KiB that QEMU's iSCSI initiator (libiscsi) sends as immediate data, and a
# write never waits for the target's R2T round trips (with the default 256, a 1 MiB write took three of them, one
# after another). Measured in bench/ebs_bench.py.
ISCSI_QUEUE_SIZE = 64


@dataclass
class DiskSpec:
    path: Path
    role: str  # root, ephemeral, swap, config, volume
    format: str = "raw"  # raw or qcow2
    readonly: bool = False
    iscsi: IscsiTarget | None = None  # an EBS volume, opened by QEMU's own iSCSI initiator (path unused)
    serial: str = ""  # the volume id, which the guest sees as the disk's serial
    rbd: RbdTarget | None = None  # an EBS volume kept in Ceph, opened by QEMU's rbd driver (path unused)
    rbd_auth: tuple[str, str] = ("", "")  # (Ceph user, libvirt secret UUID) for `rbd`


@dataclass
class DomainSpec:
    name: str  # the instance id
    uuid: str
    memory_mb: int
    vcpus: int
    disks: list[DiskSpec]
    console_log: Path
    owner_id: str = ""
    kernel: Path | None = None
    ramdisk: Path | None = None
    cmdline: str = ""
    bridge: str = ""
    mac: str = ""
    extra_cmdline: str = ""
    tags: dict[str, str] = field(default_factory=dict)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        element.text = text
    return element


def render(spec: DomainSpec, flavour: str) -> str:
    """The domain XML of `spec` for `flavour` (xen, kvm, qemu or test)."""
    if flavour not in ("xen", "kvm", "qemu", "test"):
        raise ValueError(f"unknown hypervisor flavour {flavour!r}")
    domain_type = {"xen": "xen", "kvm": "kvm", "qemu": "qemu", "test": "test"}[flavour]
    root = ET.Element("domain", {"type": domain_type})
    _sub(root, "name", spec.name)
    _sub(root, "uuid", spec.uuid)
    metadata = _sub(root, "metadata")
    ET.register_namespace(KOALA_PREFIX, KOALA_NS)
    tag = ET.SubElement(metadata, f"{{{KOALA_NS}}}instance", {"id": spec.name, "owner": spec.owner_id})
    for key, value in sorted(spec.tags.items()):
        ET.SubElement(tag, f"{{{KOALA_NS}}}tag", {"name": key}).text = value
    _sub(root, "memory", str(spec.memory_mb), unit="MiB")
    _sub(root, "vcpu", str(spec.vcpus))
    xen_pv = flavour == "xen" and spec.kernel is not None
    xen_hvm = flavour == "xen" and spec.kernel is None
    os_el = _sub(root, "os")
    if xen_pv:
        _sub(os_el, "type", "linux")
    elif flavour in ("kvm", "qemu"):
        _sub(os_el, "type", "hvm", arch="x86_64", machine="pc")
    else:
        _sub(os_el, "type", "hvm")
    if xen_hvm:
        _sub(os_el, "loader", XEN_HVMLOADER)
    if spec.kernel is not None and not xen_hvm:
        _sub(os_el, "kernel", str(spec.kernel))
        if spec.ramdisk is not None:
            _sub(os_el, "initrd", str(spec.ramdisk))
        _sub(os_el, "cmdline", _cmdline(spec, flavour))
    else:
        _sub(os_el, "boot", dev="hd")
    if not xen_pv:
        features = _sub(root, "features")
        _sub(features, "acpi")
        _sub(features, "apic")
        if xen_hvm:
            _sub(features, "pae")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")
    devices = _sub(root, "devices")
    if flavour in ("kvm", "qemu"):
        _sub(devices, "emulator", "/usr/bin/qemu-system-x86_64")
    for index, disk in enumerate(spec.disks):
        _disk(devices, disk, index, flavour, xen_pv)
    if spec.bridge:
        iface = _sub(devices, "interface", type="bridge")
        _sub(iface, "source", bridge=spec.bridge)
        if spec.mac:
            _sub(iface, "mac", address=spec.mac)
        if flavour in ("kvm", "qemu"):
            _sub(iface, "model", type="virtio")
    _console(devices, spec, flavour, xen_pv)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _cmdline(spec: DomainSpec, flavour: str) -> str:
    if spec.cmdline:
        base = spec.cmdline
    elif flavour == "xen":
        base = "root=/dev/sda1 console=hvc0"
    else:
        base = "root=/dev/vda console=ttyS0"
    return " ".join(part for part in (base, f"koala.instance={spec.name}", spec.extra_cmdline) if part)


def _target(disk: DiskSpec, index: int, flavour: str, xen_pv: bool) -> tuple[str, str]:
    if xen_pv:  # Eucalyptus's layout: partitions as whole disks
        return {"root": "sda1", "ephemeral": "sda2", "swap": "sda3"}.get(disk.role, f"sd{chr(ord('b') + index)}"), "xen"
    if flavour == "xen":
        return f"hd{chr(ord('a') + index)}", "ide"
    if flavour == "test":
        return f"hd{chr(ord('a') + index)}", "ide"
    return f"vd{chr(ord('a') + index)}", "virtio"


def iscsi_disk(parent: ET.Element | None, target: IscsiTarget, serial: str, dev: str, bus: str) -> ET.Element:
    """A libvirt network disk (protocol iscsi) logging in with the attachment's initiator name."""
    attrs = {"type": "network", "device": "disk"}
    disk = ET.Element("disk", attrs) if parent is None else ET.SubElement(parent, "disk", attrs)
    driver = {"name": "qemu", "type": "raw", "cache": "none"}
    if bus == "virtio":
        driver["queue_size"] = str(ISCSI_QUEUE_SIZE)
    _sub(disk, "driver", **driver)
    source = _sub(disk, "source", protocol="iscsi", name=f"{target.iqn}/{target.lun}")
    _sub(source, "host", name=target.host, port=str(target.port))
    _sub(_sub(source, "initiator"), "iqn", name=target.initiator)
    _sub(disk, "target", dev=dev, bus=bus)
    _sub(disk, "serial", serial)
    return disk


def _disk(devices: ET.Element, disk: DiskSpec, index: int, flavour: str, xen_pv: bool) -> None:
    if disk.iscsi is not None:
        dev, bus = _target(disk, index, flavour, False)
        iscsi_disk(devices, disk.iscsi, disk.serial, dev, bus)
        return
    if disk.rbd is not None:
        dev, bus = _target(disk, index, flavour, False)
        devices.append(rbd_disk(disk.rbd, disk.serial, dev, *disk.rbd_auth, bus=bus))
        return
    element = _sub(devices, "disk", type="file", device="disk")
    if flavour == "xen":
        _sub(element, "driver", name="qemu" if disk.format == "qcow2" else "file", type=disk.format)
    elif flavour in ("kvm", "qemu"):
        _sub(element, "driver", name="qemu", type=disk.format, cache="none" if disk.role == "root" else "writeback")
    _sub(element, "source", file=str(disk.path))
    dev, bus = _target(disk, index, flavour, xen_pv)
    _sub(element, "target", dev=dev, bus=bus)
    if disk.readonly:
        _sub(element, "readonly")


def _console(devices: ET.Element, spec: DomainSpec, flavour: str, xen_pv: bool) -> None:
    log = str(spec.console_log)
    if xen_pv:
        # The PV console (hvc0), written to the instance's console.log.
        console = _sub(devices, "console", type="file")
        _sub(console, "source", path=log)
        _sub(console, "target", type="xen", port="0")
        return
    if flavour in ("kvm", "qemu"):
        # A pty for interactive use, logged by virtlogd (root) so the qemu user needs no write access.
        serial = _sub(devices, "serial", type="pty")
        _sub(serial, "log", file=log, append="off")
        _sub(serial, "target", port="0")
        console = _sub(devices, "console", type="pty")
        _sub(console, "target", type="serial", port="0")
        return
    serial = _sub(devices, "serial", type="file")
    _sub(serial, "source", path=log)
    _sub(serial, "target", port="0")


def koala_tag(xml: str) -> dict[str, str] | None:
    """{'id', 'owner'} from a domain XML's Koala metadata, or None when the domain is not tagged as ours."""
    try:
        root = SafeET.fromstring(xml)
    except (ET.ParseError, ValueError):
        return None
    found = root.find(f"metadata/{{{KOALA_NS}}}instance")
    if found is None:
        return None
    return {"id": found.get("id", ""), "owner": found.get("owner", "")}
