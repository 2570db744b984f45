"""A real guest under QEMU software emulation (domain type qemu) through qemu:///system.

The guest image is built by deploy/guest-image/build.sh (cached outside the repository). It gets its instance id
and SSH key from the NC's NoCloud config drive and prints them on the serial console, which the NC serves as
console output. Needs root and a running libvirtd (deploy/bootstrap.sh starts one).
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from common.messages.cc_nc import ConsoleOutputResponse, ImageRef, InstanceIdRequest, VmType
from tests.nc.conftest import NcEnv, close_env, make_env
from tests.nc.support import wait_for

pytestmark = pytest.mark.qemu
REPO = Path(__file__).resolve().parents[2]
VM = VmType(name="c1.medium", cores=1, memory_mb=256, disk_gb=1)


def _libvirt_ok() -> bool:
    if os.geteuid() != 0 or shutil.which("virsh") is None:
        return False
    probe = subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True, timeout=20)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def guest_image() -> Path:
    if not _libvirt_ok():
        pytest.skip("needs root and libvirtd for qemu:///system (deploy/bootstrap.sh)")
    build = subprocess.run(
        ["bash", str(REPO / "deploy/guest-image/build.sh")], capture_output=True, text=True, timeout=600
    )
    assert build.returncode == 0, build.stderr[-2000:]
    return Path(build.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def qemu_nc(guest_image: Path, tmp_path_factory: pytest.TempPathFactory):
    # qemu runs as libvirt-qemu: the instance files must be reachable by it (pytest's tmp is root-only).
    instances = Path(f"/var/tmp/koala-nc-qemu-{secrets.token_hex(4)}")
    instances.mkdir(mode=0o755)
    env = make_env(
        tmp_path_factory.mktemp("qemu"),
        {
            "HYPERVISOR": "qemu",
            "KOALA_LIBVIRT_URI": "qemu:///system",
            "INSTANCE_PATH": instances,
            "SWAP_SIZE": 32,
            "MAX_DISK": 0,
        },
        domains=[],
    )
    for name, manifest in (("kernel", "guest/kernel"), ("initrd", "guest/initrd"), ("root.img", "guest/root")):
        env.images.add(f"bucket/{manifest}.manifest.xml", guest_image / name)
    try:
        yield env
    finally:
        close_env(env)
        shutil.rmtree(instances, ignore_errors=True)


def launch(env: NcEnv, instance_id: str) -> None:
    env.run(
        instance_id,
        image="emi-0000a001",
        manifest="bucket/guest/root.manifest.xml",
        kernel=ImageRef(id="eki-0000a001", manifest="bucket/guest/kernel.manifest.xml"),
        ramdisk=ImageRef(id="eri-0000a001", manifest="bucket/guest/initrd.manifest.xml"),
        vm_type=VM,
        ssh_public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKoalaTestKey koala@test",
    )


def console(env: NcEnv, instance_id: str) -> str:
    answer = env.cc.call(env.url, "GetConsoleOutput", InstanceIdRequest(instance_id=instance_id), ConsoleOutputResponse)
    return base64.b64decode(answer.output).decode(errors="replace")


def domain_exists(name: str) -> bool:
    result = subprocess.run(["virsh", "-c", "qemu:///system", "domstate", name], capture_output=True, timeout=20)
    return result.returncode == 0


def test_real_boot_console_terminate(qemu_nc: NcEnv) -> None:
    instance_id = f"i-{secrets.token_hex(4)}"
    launch(qemu_nc, instance_id)
    try:
        assert qemu_nc.wait_state(instance_id, "Extant", timeout=60).detail == "running"
        assert domain_exists(instance_id)
        assert (qemu_nc.instance_dir(instance_id) / "root.qcow2").exists()
        wait_for(lambda: f"KOALA-GUEST ready instance={instance_id}" in console(qemu_nc, instance_id), 120, 0.5,
                 "the guest's ready line on the console")  # fmt: skip
        text = console(qemu_nc, instance_id)
        assert f"KOALA-GUEST booted instance={instance_id} source=config-drive" in text
        assert "KOALA-GUEST ssh-key installed" in text
    except BaseException:
        print(console(qemu_nc, instance_id)[-3000:])
        raise
    finally:
        info = qemu_nc.terminate(instance_id)
    assert info.state == "Teardown"
    assert not domain_exists(instance_id)
    assert not qemu_nc.instance_dir(instance_id).exists()


def test_guest_destroyed_outside_is_noticed(qemu_nc: NcEnv) -> None:
    instance_id = f"i-{secrets.token_hex(4)}"
    launch(qemu_nc, instance_id)
    qemu_nc.wait_state(instance_id, "Extant", timeout=60)
    subprocess.run(["virsh", "-c", "qemu:///system", "destroy", instance_id], check=True, capture_output=True)
    info = qemu_nc.wait_state(instance_id, "Teardown", timeout=30)
    assert info.reason == "the domain was destroyed outside the NC"
    wait_for(lambda: not qemu_nc.instance_dir(instance_id).exists(), 10, what="files removed")
    assert "Teardown/shutoff" in qemu_nc.recorder.states(instance_id)
