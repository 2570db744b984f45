"""A real guest under QEMU software emulation (domain type qemu) through qemu:///system.

The guest image is built by deploy/guest-image/build.sh (cached outside the repository). It gets its instance id
and SSH key from the metadata service when its network offers one, else from the NC's NoCloud config drive, and
prints what it did on the serial console, which the NC serves as console output. Needs root and a running
libvirtd (deploy/bootstrap.sh starts one).
"""

from __future__ import annotations

import base64
import re
import secrets
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from common.messages.cc_nc import ConsoleOutputResponse, ImageRef, InstanceIdRequest, InstanceInfo, VmType
from tests.nc.conftest import NcEnv, close_env, make_env
from tests.waiting import wait_for

pytestmark = pytest.mark.qemu
VM = VmType(name="c1.medium", cores=1, memory_mb=256, disk_gb=1)


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
            "KOALA_NC_REBOOT_GRACE_SECONDS": 5,  # the test guest ignores ACPI: reset it soon
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


def domain_id(name: str) -> str:
    result = subprocess.run(["virsh", "-c", "qemu:///system", "domid", name], capture_output=True, text=True)
    return result.stdout.strip()


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
        assert f"KOALA-GUEST booted instance={instance_id}" in text  # first, from the kernel command line
        assert f"KOALA-GUEST config-drive instance={instance_id}" in text  # no NIC here: the config drive
        assert f"KOALA-GUEST ready instance={instance_id} source=config-drive" in text
        assert "KOALA-GUEST ssh-key installed" in text
        # Reboot: the ACPI request first; this guest (busybox, no acpid) ignores it, so after the grace period the
        # NC resets it, in the same domain, and the guest boots a second time.
        booted = f"KOALA-GUEST booted instance={instance_id}"
        first_id = domain_id(instance_id)
        rebooted = qemu_nc.cc.call(qemu_nc.url, "RebootInstance", InstanceIdRequest(instance_id=instance_id),
                                   InstanceInfo)  # fmt: skip
        assert rebooted.state == "Extant"
        wait_for(lambda: console(qemu_nc, instance_id).count(booted) == 2, 120, 0.5, "a second boot")
        assert domain_id(instance_id) == first_id  # reset in place, not destroyed and recreated
        log = qemu_nc.cloud.log("nc")
        assert f"{instance_id}: no restart 5 s after the ACPI request: hard reset" in log
        wait_for(lambda: console(qemu_nc, instance_id).count("KOALA-GUEST ready") == 2, 120, 0.5,
                 "the ready line after the reboot")  # fmt: skip
        # A guest that restarts by itself within the grace period (here a reset from outside stands in for a guest
        # heeding ACPI) is not reset again: libvirt's reboot event ends the wait.
        qemu_nc.cc.call(qemu_nc.url, "RebootInstance", InstanceIdRequest(instance_id=instance_id), InstanceInfo)
        subprocess.run(["virsh", "-c", "qemu:///system", "reset", instance_id], check=True, capture_output=True)
        # The restart line is the last act of the request's grace-period task (it returns without a reset), and the
        # first request's task ended with its hard reset above: nothing is left waiting that could reset it again.
        wait_for(lambda: f"{instance_id}: the guest restarted" in qemu_nc.cloud.log("nc"), 30, 0.2, "the restart")
        wait_for(lambda: console(qemu_nc, instance_id).count(booted) == 3, 120, 0.5, "a third boot")
        assert qemu_nc.cloud.log("nc").count(f"{instance_id}: no restart") == 1
        assert console(qemu_nc, instance_id).count(booted) == 3
        assert qemu_nc.describe(instance_id)[instance_id].state == "Extant"
    except BaseException:
        print(console(qemu_nc, instance_id)[-3000:])
        raise
    finally:
        info = terminate_watched(qemu_nc, instance_id)
    assert info.state == "Teardown"
    assert not domain_exists(instance_id)
    assert not qemu_nc.instance_dir(instance_id).exists()


def terminate_watched(env: NcEnv, instance_id: str) -> InstanceInfo:
    """TerminateInstance sent twice at once while DescribeInstances is polled: neither answer nor any poll may tell
    of the end while libvirt still has the domain (QEMU takes a second or two to exit after libvirt's destroy
    starts; a CC told of the end may start the instance again, its volumes with it)."""

    def first_end_seen() -> bool:
        """Whether the domain was gone when a poll first showed the end (the domain only ever goes away)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            info = env.describe(instance_id).get(instance_id)
            if info is None or info.state == "Teardown":
                return not domain_exists(instance_id)
            time.sleep(0.02)
        raise AssertionError(f"{instance_id} never ended")

    def terminated() -> tuple[InstanceInfo, bool]:
        info = env.terminate(instance_id)
        return info, not domain_exists(instance_id)

    with ThreadPoolExecutor(3) as pool:
        polled = pool.submit(first_end_seen)
        answers = [pool.submit(terminated) for _ in range(2)]
        results = [answer.result() for answer in answers]
        assert polled.result(), "a poll showed the end while the domain was still there"
    assert [gone for _, gone in results] == [True, True], "an answer told of the end while the domain was there"
    return results[0][0]


def sysrq_uptime(env: NcEnv, instance_id: str, after: float) -> float:
    """The guest kernel's uptime, from the timestamp of the line a magic SysRq key press makes it print on its
    console (the key goes in through QEMU's keyboard); the first such timestamp later than `after`."""
    pattern = re.compile(r"\[\s*(\d+\.\d+)\]\s+sysrq")

    def stamp() -> float | None:
        subprocess.run(["virsh", "-c", "qemu:///system", "send-key", instance_id, "KEY_LEFTALT", "KEY_SYSRQ", "KEY_H"],
                       capture_output=True, timeout=20)  # fmt: skip
        found = [float(m) for m in pattern.findall(console(env, instance_id))]
        later = [f for f in found if f > after]
        return later[-1] if later else None

    return wait_for(stamp, 60, 1.0, "a SysRq line with the guest's uptime on the console")


def test_suspend_and_resume_a_guest(qemu_nc: NcEnv) -> None:
    """SuspendInstance saves the running guest to its instance directory (libvirt save) and stops it, giving the
    node its cores and memory back; the record survives a kill -9 of the NC; ResumeInstance restores the guest
    where it was: the same boot (no second boot line on the console), running on."""
    instance_id = f"i-{secrets.token_hex(4)}"
    launch(qemu_nc, instance_id)
    try:
        qemu_nc.wait_state(instance_id, "Extant", timeout=60)
        wait_for(lambda: f"KOALA-GUEST ready instance={instance_id}" in console(qemu_nc, instance_id), 120, 0.5,
                 "the guest's ready line on the console")  # fmt: skip
        before = sysrq_uptime(qemu_nc, instance_id, 0.0)
        cores_running = qemu_nc.resources().cores_available
        call = qemu_nc.cc.call
        suspended = call(qemu_nc.url, "SuspendInstance", InstanceIdRequest(instance_id=instance_id), InstanceInfo)
        assert (suspended.state, suspended.detail) == ("Extant", "suspended")
        assert not domain_exists(instance_id)
        assert (qemu_nc.instance_dir(instance_id) / "suspended.save").stat().st_size > 0
        assert qemu_nc.resources().cores_available == cores_running + VM.cores
        # The sweep leaves it alone (no domain is what suspended means) and a restart finds it suspended.
        qemu_nc.cloud.kill("nc")
        qemu_nc.cloud.start("nc")
        assert qemu_nc.describe(instance_id)[instance_id].detail == "suspended"
        assert not domain_exists(instance_id)
        resumed = call(qemu_nc.url, "ResumeInstance", InstanceIdRequest(instance_id=instance_id), InstanceInfo)
        assert (resumed.state, resumed.detail) == ("Extant", "running")
        assert domain_exists(instance_id)
        assert not (qemu_nc.instance_dir(instance_id) / "suspended.save").exists()
        assert qemu_nc.resources().cores_available == cores_running
        # The guest's own clock (the kernel's printk time) goes on from before the suspension: not a new boot.
        after = sysrq_uptime(qemu_nc, instance_id, before)
        assert after > before
        assert "KOALA-GUEST booted" not in console(qemu_nc, instance_id)  # (QEMU's restore restarts the log)
        with pytest.raises(Exception) as refused:  # resuming twice is refused with the NC's reason
            call(qemu_nc.url, "ResumeInstance", InstanceIdRequest(instance_id=instance_id), InstanceInfo)
        assert "IncorrectInstanceState" in str(refused.value)
    except BaseException:
        print(console(qemu_nc, instance_id)[-3000:])
        raise
    finally:
        qemu_nc.terminate(instance_id)
    assert not qemu_nc.instance_dir(instance_id).exists()


def test_guest_destroyed_outside_is_noticed(qemu_nc: NcEnv) -> None:
    instance_id = f"i-{secrets.token_hex(4)}"
    launch(qemu_nc, instance_id)
    qemu_nc.wait_state(instance_id, "Extant", timeout=60)
    subprocess.run(["virsh", "-c", "qemu:///system", "destroy", instance_id], check=True, capture_output=True)
    info = qemu_nc.wait_state(instance_id, "Teardown", timeout=30)
    assert info.reason == "the domain was destroyed outside the NC"
    wait_for(lambda: not qemu_nc.instance_dir(instance_id).exists(), 10, what="files removed")
    # The push leaves once the domain is gone and lingers a moment to coalesce: wait for it to arrive.
    wait_for(lambda: "Teardown/shutoff" in qemu_nc.recorder.states(instance_id), 10, what="Teardown/shutoff pushed")


@pytest.mark.netns
def test_guest_dhcp_metadata_and_ssh(guest_image: Path, tmp_path: Path) -> None:
    """The guest gets its address by DHCP and its key from the metadata service (preferred to the config drive,
    which is attached too but carries no key here), then serves SSH with that key.

    The "cluster side" is a network namespace this test makes: dnsmasq for DHCP and a tiny HTTP server holding
    169.254.169.254, joined to the guest by a bridge that the NC's StartNetwork creates.
    """
    tag = secrets.token_hex(3)
    bridge, netns, host_end, ns_end = f"kbr{tag}", f"knc{tag}", f"kvh{tag}", f"kvn{tag}"
    instance_id = f"i-{secrets.token_hex(4)}"
    mac = "d0:0d:" + ":".join(instance_id[2 + i : 4 + i] for i in range(0, 8, 2))
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    metadata = tmp_path / "md" / "latest" / "meta-data"
    (metadata / "public-keys" / "0").mkdir(parents=True)
    (metadata / "instance-id").write_text(instance_id)
    (metadata / "public-keys" / "0" / "openssh-key").write_text(key.with_suffix(".pub").read_text())
    instances = Path(f"/var/tmp/koala-nc-qemu-{secrets.token_hex(4)}")
    instances.mkdir(mode=0o755)
    env = make_env(
        tmp_path / "nc",
        {
            "HYPERVISOR": "qemu",
            "KOALA_LIBVIRT_URI": "qemu:///system",
            "INSTANCE_PATH": instances,
            "SWAP_SIZE": 32,
            "MAX_DISK": 0,
        },
        domains=[],
    )
    helpers: list[subprocess.Popen] = []

    def sh(*argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True)

    try:
        from common.messages.cc_nc import Ack, NetConfig, StartNetworkRequest

        env.cc.call(env.url, "StartNetwork", StartNetworkRequest(bridge=bridge), Ack)
        assert Path(f"/sys/class/net/{bridge}/bridge").exists()  # the NC made the bridge
        sh("ip", "netns", "add", netns)
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end, "netns", netns)
        sh("ip", "link", "set", host_end, "master", bridge, "up")
        for argv in (
            ("ip", "addr", "add", "10.213.0.1/24", "dev", ns_end),
            ("ip", "addr", "add", "169.254.169.254/32", "dev", ns_end),
            ("ip", "link", "set", ns_end, "up"),
            ("ip", "link", "set", "lo", "up"),
        ):
            sh("ip", "netns", "exec", netns, *argv)
        helpers.append(subprocess.Popen(
            ["ip", "netns", "exec", netns, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
             "--no-resolv", f"--interface={ns_end}", "--bind-interfaces", "--leasefile-ro", "--pid-file=",
             "--dhcp-range=10.213.0.50,10.213.0.99,255.255.255.0,1h", f"--dhcp-host={mac},10.213.0.60",
             "--dhcp-option=3,10.213.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        helpers.append(subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-m", "http.server", "80", "--bind", "169.254.169.254",
             "--directory", str(tmp_path / "md")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        for name, manifest in (("kernel", "guest/kernel"), ("initrd", "guest/initrd"), ("root.img", "guest/root")):
            env.images.add(f"bucket/{manifest}.manifest.xml", guest_image / name)
        env.run(
            instance_id,
            image="emi-0000a001",
            manifest="bucket/guest/root.manifest.xml",
            kernel=ImageRef(id="eki-0000a001", manifest="bucket/guest/kernel.manifest.xml"),
            ramdisk=ImageRef(id="eri-0000a001", manifest="bucket/guest/initrd.manifest.xml"),
            vm_type=VM,
            net=NetConfig(private_mac=mac, private_ip="10.213.0.60", bridge=bridge),
        )
        try:
            wait_for(lambda: f"KOALA-GUEST ready instance={instance_id}" in console(env, instance_id), 120, 0.5,
                     "the guest's ready line")  # fmt: skip
            text = console(env, instance_id)
            assert "KOALA-GUEST dhcp 10.213.0.60/24" in text
            assert f"KOALA-GUEST metadata instance={instance_id}" in text and "ssh-key installed" in text
            assert f"KOALA-GUEST ready instance={instance_id} source=metadata" in text
            ssh = subprocess.run(
                ["ip", "netns", "exec", netns, "ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no",
                 "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                 "root@10.213.0.60", "hostname"],
                capture_output=True, text=True, timeout=60)  # fmt: skip
            assert ssh.returncode == 0 and ssh.stdout.strip() == instance_id, ssh.stderr
        except BaseException:
            print(console(env, instance_id)[-3000:])
            raise
        # The guest powers itself off: libvirt's event tells the NC, which tears the instance down.
        helpers.append(subprocess.Popen(  # the connection dies with the guest: do not wait for ssh
            ["ip", "netns", "exec", netns, "ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "root@10.213.0.60", "poweroff -f"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        info = env.wait_state(instance_id, "Teardown", timeout=60)
        assert info.reason == "the guest shut down" and info.detail == "shutoff"
        assert not domain_exists(instance_id)
        wait_for(lambda: not env.instance_dir(instance_id).exists(), 10, what="files removed")
    finally:
        for helper in helpers:
            helper.terminate()
            helper.wait(10)
        close_env(env)
        # The veth first: deleting the namespace does not always take the pair with it at once.
        for link in (host_end, bridge):
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        shutil.rmtree(instances, ignore_errors=True)
