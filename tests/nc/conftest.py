"""An NC process (test hypervisor) with an image server in Walrus's place and a recorder in the CC's place."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.messages.cc_nc import (
    DescribeInstancesRequest,
    DescribeInstancesResponse,
    DescribeResourceResponse,
    ImageRef,
    InstanceIdRequest,
    InstanceInfo,
    RunInstanceRequest,
    VmType,
)
from tests.harness import Cloud
from tests.nc.client import SyncClient
from tests.nc.support import ImageServer, NotifyRecorder, node_file
from tests.waiting import wait_for

SMALL = VmType(name="m1.small", cores=1, memory_mb=128, disk_gb=2)
OWNER = "000000000042"


@dataclass
class NcEnv:
    cloud: Cloud
    images: ImageServer
    recorder: NotifyRecorder
    cc: SyncClient
    admin: SyncClient
    node_xml: Path
    instance_root: Path | None = None  # INSTANCE_PATH when the test sets one

    @property
    def url(self) -> str:
        return self.cloud.url("nc")

    @property
    def instance_path(self) -> Path:
        return self.instance_root or self.cloud.dir / "data" / "nc-node1" / "instances"

    def run(self, instance_id: str, image: str = "emi-00000001", **fields) -> InstanceInfo:
        request = RunInstanceRequest(
            instance_id=instance_id,
            reservation_id=fields.pop("reservation_id", "r-00000001"),
            owner_id=fields.pop("owner_id", OWNER),
            image=ImageRef(id=image, manifest=fields.pop("manifest", f"bucket/{image}.manifest.xml")),
            vm_type=fields.pop("vm_type", SMALL),
            **fields,
        )
        return self.cc.call(self.url, "RunInstance", request, InstanceInfo)

    def describe(self, *ids: str) -> dict[str, InstanceInfo]:
        answer = self.cc.call(
            self.url, "DescribeInstances", DescribeInstancesRequest(instance_ids=list(ids)), DescribeInstancesResponse
        )
        return {i.instance_id: i for i in answer.instances}

    def resources(self) -> DescribeResourceResponse:
        return self.admin.call(self.url, "DescribeResource", None, DescribeResourceResponse)

    def wait_sweeps(self, count: int = 2) -> None:
        """Until the NC's monitor has compared libvirt with its records `count` more times (after a change)."""
        start = self.resources().monitor_sweeps
        wait_for(lambda: self.resources().monitor_sweeps >= start + count, 30, 0.05, f"{count} monitor sweeps")

    def terminate(self, instance_id: str) -> InstanceInfo:
        return self.cc.call(self.url, "TerminateInstance", InstanceIdRequest(instance_id=instance_id), InstanceInfo)

    def wait_state(self, instance_id: str, state: str, timeout: float = 30) -> InstanceInfo:
        def check():
            info = self.describe(instance_id).get(instance_id)
            return info if info is not None and info.state == state else None

        return wait_for(check, timeout, 0.05, f"{instance_id} {state}")

    def instance_dir(self, instance_id: str, owner: str = OWNER) -> Path:
        return self.instance_path / owner / instance_id

    def image(self, name: str, size: int = 1 << 20) -> str:
        """Serve a new image of random bytes; returns its manifest location."""
        path = self.cloud.dir / f"{name}.img"
        path.write_bytes(os.urandom(size))
        manifest = f"bucket/{name}.manifest.xml"
        self.images.add(manifest, path)
        return manifest


# A domain the test hypervisor runs that is not the NC's: named like an instance, without Koala's tag.
FOREIGN = "<domain type='test'><name>i-deadbeef</name><memory>131072</memory><os><type>hvm</type></os></domain>"


def make_env(tmp: Path, nc_settings: dict | None = None, domains: list[str] = (FOREIGN,)) -> NcEnv:
    tmp.mkdir(parents=True, exist_ok=True)
    node_xml = tmp / "node.xml"
    uri = node_file(node_xml, domains)
    settings = {
        "HYPERVISOR": "test",
        "KOALA_LIBVIRT_URI": uri,
        "KOALA_NC_MONITOR_SECONDS": 0.3,
        "KOALA_NC_FORGET_SECONDS": 600,
        "NC_CACHE_SIZE": 64,
        "SWAP_SIZE": 64,
        "MAX_DISK": 1000,  # the simulated host's disk (disks are sparse)
        **(nc_settings or {}),
    }
    cloud = Cloud(tmp / "cloud", roles=("nc",), extra={"nc": settings})
    images = ImageServer(cloud.dir / "pki", port=int(cloud.url("walrus").rsplit(":", 1)[1]))
    with cloud.aio.conf_path("nc").open("a") as conf:  # the NC fetches from the image server
        conf.write(f"KOALA_WALRUS_URL={images.url}\n")
    images.start()
    recorder = NotifyRecorder(cloud.dir / "pki", "cc-zone1", int(cloud.url("cc").rsplit(":", 1)[1]))
    cloud.start("nc")
    pki_dir = cloud.dir / "pki"
    clients = SyncClient(pki_dir, "cc-zone1"), SyncClient(pki_dir, "koala-admin")
    return NcEnv(cloud, images, recorder, *clients, node_xml, settings.get("INSTANCE_PATH"))


def close_env(env: NcEnv) -> None:
    """Terminate what is still running (a failed test must not leave guests behind), then stop everything."""
    if "nc" in env.cloud.processes:
        try:
            for info in env.describe().values():
                if info.state != "Teardown":
                    env.terminate(info.instance_id)
        except Exception as err:  # the NC may be the thing that failed
            print(f"close_env: could not terminate leftovers: {err}")
    env.cloud.stop()
    env.cc.close()
    env.admin.close()
    env.images.close()
    env.recorder.close()


@pytest.fixture(scope="module")
def nc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NcEnv]:
    env = make_env(
        tmp_path_factory.mktemp("nc"),
        {"INSTANCE_TIMEOUT": 6, "CONCURRENT_DISK_OPS": 4, "KOALA_NC_REBOOT_GRACE_SECONDS": 1},
    )
    try:
        yield env
    finally:
        close_env(env)
