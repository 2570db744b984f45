"""The NC on libvirt's test driver: the lifecycle, many instances, failures, resources, console, reboot."""

from __future__ import annotations

import base64
import subprocess

import pytest

from common.messages.cc_nc import (
    ConsoleOutputResponse,
    ImageRef,
    InstanceIdRequest,
    InstanceInfo,
    InstanceResults,
    RunInstanceRequest,
    RunInstancesRequest,
    TerminateInstancesRequest,
)
from common.rpc import RpcError
from tests.nc.conftest import SMALL, NcEnv
from tests.waiting import wait_for


def test_full_lifecycle(nc: NcEnv) -> None:
    manifest = nc.image("life")
    before = nc.resources()
    pending = nc.run("i-00000001", manifest=manifest, ssh_public_key="ssh-ed25519 AAAAC3Nza test@koala",
                     user_data=base64.b64encode(b"#!/bin/sh\necho hi\n").decode())  # fmt: skip
    assert pending.state == "Pending" and pending.detail == "staging"
    info = nc.wait_state("i-00000001", "Extant")
    assert info.detail == "running" and info.vm_type == SMALL and info.image_id == "emi-00000001"
    directory = nc.instance_dir("i-00000001")
    files = {p.name for p in directory.iterdir()}
    assert {"root.qcow2", "ephemeral.qcow2", "swap.img", "config.iso", "libvirt.xml"} <= files
    # The root disk is an overlay on the cached image, as large as the VM type's disk.
    qemu_img = subprocess.run(["qemu-img", "info", "--output=json", str(directory / "root.qcow2")],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert '"virtual-size": 2147483648' in qemu_img and ".cache/emi-00000001/" in qemu_img
    validate = subprocess.run(["virt-xml-validate", str(directory / "libvirt.xml"), "domain"], capture_output=True)
    assert validate.returncode == 0, validate.stdout
    # Resources: held while it runs.
    during = nc.resources()
    assert during.cores_available == before.cores_available - 1
    assert during.memory_available_mb == before.memory_available_mb - 128
    assert during.disk_available_gb == before.disk_available_gb - 2
    assert during.instances == before.instances + 1
    # The answer told the CC of the admission (Pending/staging, above); every change after it was pushed, in order.
    wait_for(lambda: "Extant/running" in nc.recorder.states("i-00000001"), 10, what="push of Extant")
    pushed = nc.recorder.states("i-00000001")  # in order; a burst may coalesce into its latest state
    rank = {"Pending/booting": 1, "Extant/running": 2}
    assert [rank[p] for p in pushed] == sorted(rank[p] for p in pushed)
    done = nc.terminate("i-00000001")
    assert done.state == "Teardown" and done.reason == "terminated by request"
    assert not directory.exists()
    after = nc.resources()
    assert (after.cores_available, after.memory_available_mb, after.disk_available_gb) == (
        before.cores_available, before.memory_available_mb, before.disk_available_gb)  # fmt: skip
    # The answer (sent once the domain is destroyed) told the CC of the end: it is not pushed as well.
    # Idempotent: terminating again and a retried RunInstance answer what is.
    assert nc.terminate("i-00000001").state == "Teardown"
    assert nc.run("i-00000001", manifest=manifest).state == "Teardown"


def test_many_instances_share_one_download(nc: NcEnv) -> None:
    manifest = nc.image("many", size=4 << 20)
    ids = [f"i-1000{n:04x}" for n in range(40)]
    for instance_id in ids:
        assert nc.run(instance_id, image="emi-00000002", manifest=manifest).state == "Pending"
    wait_for(lambda: all(i.state == "Extant" for i in nc.describe(*ids).values()), 60, what="all Extant")
    assert nc.images.downloads(manifest) == 1  # one download however many instances waited for it
    assert nc.resources().instances == 40
    for instance_id in ids:
        nc.terminate(instance_id)
    assert all(i.state == "Teardown" for i in nc.describe(*ids).values())
    assert not any(nc.instance_dir(i).exists() for i in ids)
    assert nc.resources().instances == 0
    # A later launch re-checks the cached image with Walrus (zero bytes) and does not download it again.
    nc.run("i-1000ffff", image="emi-00000002", manifest=manifest)
    nc.wait_state("i-1000ffff", "Extant")
    assert nc.images.downloads(manifest) == 1
    nc.terminate("i-1000ffff")


def test_changed_image_is_fetched_again(nc: NcEnv) -> None:
    manifest = nc.image("changing")
    nc.run("i-20000001", image="emi-00000003", manifest=manifest)
    nc.wait_state("i-20000001", "Extant")
    nc.image("changing")  # re-bundled under the same manifest: new bytes
    nc.run("i-20000002", image="emi-00000003", manifest=manifest)
    nc.wait_state("i-20000002", "Extant")
    assert nc.images.downloads(manifest) == 2
    cache_dir = nc.instance_path / ".cache" / "emi-00000003"
    assert len(list(cache_dir.glob("*.img"))) == 2  # the old version stays while i-20000001's overlay uses it
    nc.terminate("i-20000001")
    assert len(list(cache_dir.glob("*.img"))) == 1
    nc.terminate("i-20000002")


def test_terminate_during_staging_cancels(nc: NcEnv) -> None:
    manifest = nc.image("slow")
    nc.images.delay = 2.0
    try:
        nc.run("i-30000001", image="emi-00000004", manifest=manifest)
        nc.run("i-30000002", image="emi-00000004", manifest=manifest)
        wait_for(lambda: manifest in nc.images.arrived, 10, what="the slow image asked for")
        done = nc.terminate("i-30000001")
        assert done.state == "Teardown" and done.detail == "terminated"
        assert not nc.instance_dir("i-30000001").exists()
        # The other instance waiting for the same download is not disturbed.
        assert nc.wait_state("i-30000002", "Extant").detail == "running"
    finally:
        nc.images.delay = 0.0
    assert "Extant/running" not in nc.recorder.states("i-30000001")
    nc.terminate("i-30000002")


def test_boot_timeout(nc: NcEnv) -> None:
    manifest = nc.image("stuck")
    nc.images.delay = 8.0  # longer than INSTANCE_TIMEOUT (6 s)
    try:
        nc.run("i-40000001", image="emi-00000005", manifest=manifest)
        info = nc.wait_state("i-40000001", "Teardown", timeout=20)
    finally:
        nc.images.delay = 0.0
    assert info.reason.startswith("boot timeout")
    # Teardown is recorded before the domain and files go (crash safety): the files follow shortly.
    wait_for(lambda: not nc.instance_dir("i-40000001").exists(), 10, what="files removed")


def test_walrus_unreachable(nc: NcEnv) -> None:
    manifest = nc.image("away")
    nc.images.stop()
    try:
        nc.run("i-50000001", image="emi-00000006", manifest=manifest)
        info = nc.wait_state("i-50000001", "Teardown")
    finally:
        nc.images.start()
    assert "WalrusUnreachable" in info.reason, info.reason
    wait_for(lambda: not nc.instance_dir("i-50000001").exists(), 10, what="files removed")
    assert nc.resources().instances == 0


def test_image_unknown_to_walrus(nc: NcEnv) -> None:
    nc.run("i-50000002", image="emi-00000007", manifest="bucket/nothing.manifest.xml")
    info = nc.wait_state("i-50000002", "Teardown")
    assert "NoSuchKey" in info.reason


def test_libvirt_error_leaves_foreign_domain_alone(nc: NcEnv) -> None:
    # The test hypervisor already runs a domain named i-deadbeef that is not ours (see node_file below):
    # creating ours fails in libvirt, the instance goes to Teardown, and the foreign domain is never destroyed.
    assert "i-deadbeef" in nc.resources().unknown_domains
    manifest = nc.image("clash")
    nc.run("i-deadbeef", image="emi-00000008", manifest=manifest)
    info = nc.wait_state("i-deadbeef", "Teardown")
    assert info.reason.startswith("libvirt:") and "already" in info.reason, info.reason
    nc.wait_sweeps()  # the foreign domain stays and is still reported
    assert "i-deadbeef" in nc.resources().unknown_domains
    assert "not tagged" in nc.cloud.log("nc")


def test_disk_full(nc: NcEnv) -> None:
    owner = "000000000666"
    mount_point = nc.instance_path / owner
    mount_point.mkdir(parents=True, exist_ok=True)
    # One page: the disks are sparse stamps of a few KiB each (disks.py), so a larger tmpfs would hold them.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(mount_point)], check=True)
    try:
        manifest = nc.image("full")
        nc.run("i-60000001", image="emi-00000009", manifest=manifest, owner_id=owner)
        info = nc.wait_state("i-60000001", "Teardown")
        assert "No space left on device" in info.reason, info.reason
        wait_for(lambda: list(mount_point.iterdir()) == [], 10, what="the partial files removed")
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
    assert nc.resources().instances == 0


def test_console_output_and_reboot(nc: NcEnv) -> None:
    manifest = nc.image("console")
    nc.run("i-70000001", image="emi-0000000a", manifest=manifest)
    nc.wait_state("i-70000001", "Extant")
    # The test hypervisor writes no console: stand in for the guest's serial output.
    log = nc.instance_dir("i-70000001") / "console.log"
    log.write_bytes(b"A" * 70000 + b"login: ready\n")
    answer = nc.cc.call(nc.url, "GetConsoleOutput", InstanceIdRequest(instance_id="i-70000001"),
                        ConsoleOutputResponse)  # fmt: skip
    output = base64.b64decode(answer.output)
    assert len(output) == 64 * 1024 and output.endswith(b"login: ready\n")
    rebooted = nc.cc.call(nc.url, "RebootInstance", InstanceIdRequest(instance_id="i-70000001"), InstanceInfo)
    assert rebooted.state == "Extant"
    # A second request while the first waits: the test hypervisor's guest never restarts by itself, so one hard
    # reset follows the grace period (1 s here), not one per request.
    nc.cc.call(nc.url, "RebootInstance", InstanceIdRequest(instance_id="i-70000001"), InstanceInfo)
    wait_for(lambda: "i-70000001: no restart 1 s after the ACPI request: hard reset" in nc.cloud.log("nc"), 10, 0.1,
             "the hard reset")  # fmt: skip
    wait_for(lambda: "i-70000001: a reboot request's grace ended; a later" in nc.cloud.log("nc"), 10, 0.1,
             "the first request's wait to end")  # fmt: skip
    assert nc.cloud.log("nc").count("i-70000001: no restart") == 1
    assert nc.describe("i-70000001")["i-70000001"].state == "Extant"
    nc.terminate("i-70000001")


def test_bad_requests_are_clear_errors(nc: NcEnv) -> None:
    with pytest.raises(RpcError) as err:
        nc.run("../../etc")
    assert err.value.status == 400 and err.value.code == "InvalidInstanceID.Malformed"
    with pytest.raises(RpcError) as err:
        nc.run("i-80000001", image="../x")
    assert err.value.code == "InvalidAMIID.Malformed"
    with pytest.raises(RpcError) as err:
        nc.run("i-80000002", user_data="***not base64***")
    assert err.value.code == "InvalidUserData.Malformed"
    with pytest.raises(RpcError) as err:
        nc.run("i-80000003", vm_type=SMALL.model_copy(update={"cores": 100000}))
    assert err.value.code == "InsufficientResources"
    with pytest.raises(RpcError) as err:
        nc.terminate("i-8fffffff")
    assert err.value.status == 404
    request = RunInstanceRequest.model_validate(
        {"instance_id": "i-80000004", "reservation_id": "r-1", "owner_id": "x",
         "image": {"id": "emi-00000001", "manifest": "b/k"}, "vm_type": SMALL.model_dump()})  # fmt: skip
    with pytest.raises(RpcError) as err:  # the admin may look, not launch
        nc.admin.call(nc.url, "RunInstance", request, InstanceInfo)
    assert err.value.status == 403
    assert "i-80000004" not in nc.describe()


def test_run_instances_answers_each_request(nc: NcEnv) -> None:
    """RunInstances and TerminateInstances (the CC's coalesced calls): each request is run as if alone, with its
    own answer or error, in order."""
    manifest = nc.image("batch")

    def request(instance_id: str, **fields) -> RunInstanceRequest:
        return RunInstanceRequest(
            instance_id=instance_id, reservation_id=fields.pop("reservation_id", "r-0000b001"), owner_id="000000000042",
            image=ImageRef(id="emi-0000b001", manifest=manifest), vm_type=SMALL, **fields,
        )  # fmt: skip

    batch = RunInstancesRequest(
        instances=[
            request("i-b0000001"),
            request("i-b0000002", user_data="not base64!"),
            request("i-b0000003"),
            request("i-b0000001", reservation_id="r-0000b002"),  # the same id for another reservation
        ]
    )
    answer = nc.cc.call(nc.url, "RunInstances", batch, InstanceResults)
    assert [(r.info.state if r.info else None, r.status, r.code) for r in answer.results] == [
        ("Pending", 0, ""),
        (None, 400, "InvalidUserData.Malformed"),
        ("Pending", 0, ""),
        (None, 409, "InstanceIdInUse"),
    ]
    for instance_id in ("i-b0000001", "i-b0000003"):
        nc.wait_state(instance_id, "Extant")
    assert "i-b0000002" not in nc.describe()
    ids = ["i-b0000001", "i-b0000009", "i-b0000003"]  # the second was never here
    ended = nc.cc.call(nc.url, "TerminateInstances", TerminateInstancesRequest(instance_ids=ids), InstanceResults)
    assert [(r.info.state if r.info else None, r.status) for r in ended.results] == [
        ("Teardown", 0),
        (None, 404),
        ("Teardown", 0),
    ]
    assert not nc.instance_dir("i-b0000001").exists() and not nc.instance_dir("i-b0000003").exists()
    with pytest.raises(RpcError) as too_many:  # the batch size is bounded
        unchecked = RunInstancesRequest.model_construct(instances=[request(f"i-b1{n:06x}") for n in range(101)])
        nc.cc.call(nc.url, "RunInstances", unchecked, InstanceResults)
    assert too_many.value.status == 400
