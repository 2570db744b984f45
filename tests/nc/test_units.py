"""Small pieces of the NC checked directly: the config drive's layout, resource arithmetic, path safety."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path

import pycdlib
import pytest

from common.decrypted_images import ImageFetchError, split_manifest
from common.messages.cc_nc import ImageRef, NetConfig, RunInstanceRequest, VmType
from services.node_controller import configdrive, resources


def request(**fields) -> RunInstanceRequest:
    return RunInstanceRequest(
        instance_id="i-0a0b0c0d",
        reservation_id="r-01020304",
        owner_id="000000000001",
        image=ImageRef(id="emi-00000001", manifest="b/k"),
        vm_type=VmType(name="m1.small", cores=1, memory_mb=128, disk_gb=2),
        **fields,
    )


def read_iso(path: Path) -> tuple[str, dict[str, bytes]]:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    label = iso.pvd.volume_identifier.decode().strip()
    files = {}
    for name in ("meta-data", "user-data"):
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
        files[name] = out.getvalue()
    iso.close()
    return label, files


def test_config_drive_is_nocloud(tmp_path: Path) -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA test@koala"
    req = request(ssh_public_key=key, user_data=base64.b64encode(b"#cloud-config\n").decode(),
                  net=NetConfig(private_ip="10.0.0.5"))  # fmt: skip
    path = asyncio.run(configdrive.build(tmp_path / "config.iso", req))
    label, files = read_iso(path)
    assert label == "cidata"
    meta = files["meta-data"].decode()
    assert "instance-id: i-0a0b0c0d" in meta and "local-ipv4: 10.0.0.5" in meta
    assert f'public-keys:\n  - "{key}"' in meta
    assert files["user-data"] == b"#cloud-config\n"


def test_config_drive_without_key_or_data(tmp_path: Path) -> None:
    _, files = read_iso(asyncio.run(configdrive.build(tmp_path / "c.iso", request())))
    assert "public-keys" not in files["meta-data"].decode() and files["user-data"] == b""


def test_resources_cap_and_simulate(tmp_path: Path) -> None:
    qemu = resources.limits("qemu", 8, 16384, tmp_path, 1024, 0, 4, 0, 0)
    assert qemu["cores"] == 4 and qemu["memory_mb"] == 16384 - 256 and qemu["disk_gb"] >= 0
    capped = resources.limits("kvm", 8, 16384, tmp_path, 0, 0, 16, 2048, 1)
    assert capped == {"cores": 8, "memory_mb": 2048, "disk_gb": min(1, capped["disk_gb"])}
    simulated = resources.limits("test", 16, 3072, tmp_path, 0, 0, 512, 1 << 20, 1000)
    assert simulated == {"cores": 512, "memory_mb": 1 << 20, "disk_gb": 1000}


def test_allocation_ratios(tmp_path: Path) -> None:
    # A 2-core, 24 GiB all-in-one with the default ratios runs at least 16 m1.small (1 core, 128 MiB, 2 GB).
    free_gb = resources.limits("qemu", 2, 24576, tmp_path, 0, 0, 0, 0, 0)["disk_gb"]
    offered = resources.limits("qemu", 2, 24576, tmp_path, 0, 0, 0, 0, 0, 16.0, 1.5, 1.0)
    assert offered["cores"] == 32 and offered["memory_mb"] == int((24576 - 256) * 1.5)
    assert offered["disk_gb"] == free_gb  # the real free space, not a made-up figure
    assert resources.limits("kvm", 2, 4096, tmp_path, 0, 0, 20, 0, 0, 16.0)["cores"] == 20  # MAX_CORES caps
    doubled = resources.limits("qemu", 2, 4096, tmp_path, 0, 0, 0, 0, 0, 1.0, 1.0, 2.0)["disk_gb"]
    assert abs(doubled - 2 * free_gb) <= 2  # other work on this disk may move the free space a little


def test_manifest_locations() -> None:
    assert split_manifest("bucket/dir/x.manifest.xml") == ("bucket", "dir/x.manifest.xml")
    for bad in ("", "bucket", "/bucket/", "bucket/"):
        with pytest.raises(ImageFetchError):
            split_manifest(bad)
