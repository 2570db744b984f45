"""Every domain XML flavour the NC generates is valid against libvirt's schema (virt-xml-validate)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from services.node_controller.domain import DiskSpec, DomainSpec, koala_tag, render

FLAVOURS = [
    ("xen", True),
    ("xen", False),
    ("kvm", True),
    ("kvm", False),
    ("qemu", True),
    ("qemu", False),
    ("test", False),
]


def spec(tmp_path: Path, with_kernel: bool, bridge: str = "br0") -> DomainSpec:
    disks = [
        DiskSpec(tmp_path / "root.qcow2", "root", "qcow2"),
        DiskSpec(tmp_path / "ephemeral.img", "ephemeral"),
        DiskSpec(tmp_path / "swap.img", "swap"),
        DiskSpec(tmp_path / "config.iso", "config", readonly=True),
    ]
    return DomainSpec(
        name="i-0a1b2c3d",
        uuid="9b2f6d8e-1c1f-5b5e-9c1e-3f5a7d9e0b1c",
        memory_mb=256,
        vcpus=2,
        disks=disks,
        console_log=tmp_path / "console.log",
        owner_id="000000000001",
        kernel=tmp_path / "kernel" if with_kernel else None,
        ramdisk=tmp_path / "ramdisk" if with_kernel else None,
        bridge=bridge,
        mac="d0:0d:0a:1b:2c:3d",
        tags={"reservation": "r-00000001"},
    )


@pytest.mark.skipif(shutil.which("virt-xml-validate") is None, reason="virt-xml-validate (libvirt-clients) missing")
@pytest.mark.parametrize(("flavour", "with_kernel"), FLAVOURS)
def test_xml_validates_against_libvirt_schema(tmp_path: Path, flavour: str, with_kernel: bool) -> None:
    xml = render(spec(tmp_path, with_kernel), flavour)
    path = tmp_path / "domain.xml"
    path.write_text(xml)
    result = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert koala_tag(xml) == {"id": "i-0a1b2c3d", "owner": "000000000001"}


def test_flavour_specifics(tmp_path: Path) -> None:
    pv = render(spec(tmp_path, True), "xen")
    assert "<type>linux</type>" in pv and 'dev="sda1" bus="xen"' in pv and "root=/dev/sda1" in pv
    assert 'dev="sda3"' in pv  # swap as the reference laid it out
    hvm = render(spec(tmp_path, False), "xen")
    assert "hvmloader" in hvm and "<type>hvm</type>" in hvm and "<kernel>" not in hvm
    qemu = render(spec(tmp_path, True), "qemu")
    assert '<domain xmlns:koala="https://koala.invalid/xmlns/nc/1" type="qemu">' in qemu
    assert 'bus="virtio"' in qemu and "console=ttyS0" in qemu and "koala.instance=i-0a1b2c3d" in qemu
    assert 'type="qcow2"' in qemu and "<readonly />" in qemu
    assert '<domain xmlns:koala="https://koala.invalid/xmlns/nc/1" type="kvm">' in render(spec(tmp_path, True), "kvm")
    no_net = render(spec(tmp_path, False, bridge=""), "qemu")
    assert "<interface" not in no_net


def test_hostile_values_are_escaped(tmp_path: Path) -> None:
    bad = spec(tmp_path, True)
    bad.owner_id = '"><evil/>'
    xml = render(bad, "kvm")
    assert "<evil" not in xml
    assert koala_tag(xml)["owner"] == '"><evil/>'


def test_unknown_flavour_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        render(spec(tmp_path, True), "vmware")
