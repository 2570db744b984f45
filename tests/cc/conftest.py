"""A cluster for CC tests: one real CC process and real NC processes on libvirt's test driver.

The CLC's side is played by the test: it calls the CC signed with the test PKI's `clc` certificate, and runs a
small signed receiver (common/rpc.py, `clc` identity) for the CC's NotifyInstances pushes, so the test sees
exactly what the CC reports upward. (A stand-in for the CLC only; the CC and NCs are the real services.)

Images: the NCs run with no Walrus and a node-local image cache seeded with the test image through the
cache's own table, which is how an NC keeps running instances of cached images while Walrus is away.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from common import pki
from common.db import open_db
from common.messages import cc_nc, clc_cc
from common.rpc import Caller, RpcClient, RpcServer
from common.signing import Identity, TrustStore
from tests.harness import Cloud, ExtraNode, free_port
from tests.waiting import wait_for

IMAGE_ID = "emi-0c0ffee0"
MANIFEST = "images/test.img.manifest.xml"
SMALL = cc_nc.VmType(name="m1.small", cores=1, memory_mb=128, disk_gb=1)


class ClcDouble:
    """Receives the CC's NotifyInstances in a thread of its own and keeps the latest state per instance."""

    def __init__(self, pki_dir: pki.PkiDir, port: int):
        self.identity = Identity.from_files(pki_dir.cert_path("clc"), pki_dir.key_path("clc"))
        self.trust = TrustStore(pki.load_cert(pki_dir.ca_path))
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.latest: dict[str, clc_cc.ClusterInstance] = {}
        self.pushes = 0
        self.lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    async def _notify(self, request: clc_cc.NotifyInstancesRequest, caller: Caller) -> clc_cc.Ack:
        with self.lock:
            self.pushes += 1
            for report in request.instances:
                self.latest[report.instance_id] = report
        return clc_cc.Ack()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = RpcServer(self.identity, self.trust)
        server.add("NotifyInstances", self._notify, {"cc"}, clc_cc.NotifyInstancesRequest)
        app = web.Application()
        server.install(app)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def states(self) -> dict[str, str]:
        with self.lock:
            return {i: r.state for i, r in self.latest.items()}

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)


class Cluster:
    """The handle tests use: the cloud, its nodes, the CLC double, and signed calls to the CC."""

    def __init__(self, cloud: Cloud, nodes: dict[str, ExtraNode], clc: ClcDouble):
        self.cloud, self.nodes, self.clc = cloud, nodes, clc
        self.cc_url = cloud.url("cc")
        pki_dir = cloud.aio.pki
        self.clc_identity = Identity.from_files(pki_dir.cert_path("clc"), pki_dir.key_path("clc"))
        self.cc_identity = Identity.from_files(pki_dir.cert_path("cc-zone1"), pki_dir.key_path("cc-zone1"))
        self.trust_ca = pki.load_cert(pki_dir.ca_path)

    def call(self, operation: str, message, response_type, as_identity: Identity | None = None):
        """One signed call to the CC (as the CLC by default), from a fresh client."""

        async def go():
            client = RpcClient(as_identity or self.clc_identity, TrustStore(self.trust_ca), timeout=30, retries=1)
            try:
                return await client.call(self.cc_url, operation, message, response_type)
            finally:
                await client.close()

        return asyncio.run(go())

    def call_node(self, node: ExtraNode, operation: str, message, response_type):
        """A signed call to an NC, as the CC (to read what the node itself holds)."""

        async def go():
            client = RpcClient(self.cc_identity, TrustStore(self.trust_ca), timeout=10, retries=1)
            try:
                return await client.call(node.url, operation, message, response_type)
            finally:
                await client.close()

        return asyncio.run(go())

    def nodes_info(self) -> dict[str, clc_cc.NodeInfo]:
        answer = self.call("DescribeNodes", None, clc_cc.DescribeNodesResponse)
        return {n.node_id or n.url: n for n in answer.nodes}

    def instances(self) -> dict[str, clc_cc.ClusterInstance]:
        answer = self.call("DescribeInstances", clc_cc.InstanceIdsRequest(), clc_cc.DescribeInstancesResponse)
        return {i.instance_id: i for i in answer.instances}

    def resources(self, vm: cc_nc.VmType = SMALL) -> clc_cc.ResourceAvailability:
        answer = self.call(
            "DescribeResources", clc_cc.DescribeResourcesRequest(vm_types=[vm]), clc_cc.DescribeResourcesResponse
        )
        return answer.resources[0]

    def run(self, instance_ids: list[str], min_count: int = 1, reservation: str = "r-00000001", **net):
        request = clc_cc.RunInstancesRequest(
            reservation_id=reservation,
            owner_id="123456789012",
            instances=[
                clc_cc.InstanceLaunch(instance_id=i, launch_index=n, net=cc_nc.NetConfig(**net))
                for n, i in enumerate(instance_ids)
            ],
            min_count=min_count,
            image=cc_nc.ImageRef(id=IMAGE_ID, manifest=MANIFEST),
            vm_type=SMALL,
        )
        return self.call("RunInstances", request, clc_cc.RunInstancesResponse)

    def wait(self, condition: Callable[[], object], what: str, timeout: float = 60.0):
        return wait_for(condition, timeout, interval=0.1, what=what)


def write_node_file(path: Path, domains_xml: list[str] = ()) -> str:
    """libvirt's test driver node description (64 CPUs, 64 GiB) with the domains it runs when an NC connects;
    returns its test:/// URI. Each connection starts from this file, so writing the domains an NC had created
    before restarting it is "the hypervisor kept running while the NC was down"."""
    domains = "\n".join(domains_xml)
    path.write_text(
        "<node>\n  <cpu><mhz>2000</mhz><model>x86_64</model><nodes>1</nodes><sockets>1</sockets><cores>64</cores>"
        f"<threads>1</threads><active>64</active></cpu>\n  <memory>{64 << 20}</memory>\n{domains}\n</node>\n"
    )
    return f"test://{path}"


def keep_domains(node: ExtraNode) -> None:
    """Before restarting a killed NC: its domains are still running on its (test) hypervisor."""
    kept = [p.read_text() for p in sorted((node.data_dir / "instances").glob("*/i-*/libvirt.xml"))]
    write_node_file(node.data_dir / "node.xml", kept)


def seed_image(node: ExtraNode) -> None:
    """Put the test image in the node's image cache (INSTANCE_PATH/.cache), as a finished download would."""

    async def go() -> None:
        root = node.data_dir / "instances" / ".cache" / IMAGE_ID
        root.mkdir(parents=True, exist_ok=True)
        data = b"koala test image\n" * 65536
        digest = hashlib.sha256(data).hexdigest()
        (root / f"{digest[:16]}.img").write_bytes(data)
        db = await open_db(node.data_dir / "nc.db", "services.node_controller.migrations")
        values = {
            "image_id": IMAGE_ID,
            "manifest": MANIFEST,
            "manifest_digest": "seeded",
            "sha256": digest,
            "file": f"{digest[:16]}.img",
            "size": len(data),
            "last_used": time.time(),
        }
        try:
            async with db.execute("PRAGMA table_info(image_cache)") as cursor:
                columns = [row[1] for row in await cursor.fetchall()]
            row = {key: values[key] for key in columns if key in values}
            await db.execute(
                f"INSERT OR REPLACE INTO image_cache({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                tuple(row.values()),
            )
            await db.commit()
        finally:
            await db.close()

    asyncio.run(go())


def make_cluster(
    tmp: Path,
    node_cores: dict[str, int],
    cc_settings: dict | None = None,
    start: bool = True,
    node_settings: dict | None = None,
) -> tuple[Cloud, dict[str, ExtraNode], ClcDouble]:
    """A CC over NCs named by `node_cores` (name -> MAX_CORES), with the CLC double listening; started
    unless `start` is false."""
    clc_port = free_port()
    ports = {name: free_port() for name in node_cores}
    nodes_setting = " ".join(f"127.0.0.1:{port}" for port in ports.values())
    cc = {
        "NODES": nodes_setting,
        "KOALA_CLC_URL": f"http://127.0.0.1:{clc_port}",
        "NC_POLLING_FREQUENCY": 1,
        "KOALA_NC_TIMEOUT": 2,
        **(cc_settings or {}),
    }
    cloud = Cloud(tmp, roles=("cc",), extra={"cc": cc})
    clc = ClcDouble(cloud.aio.pki, clc_port)
    clc.start()
    nodes = {}
    for name, cores in node_cores.items():
        data_dir = cloud.dir / "data" / f"nc-{name}"
        data_dir.mkdir(parents=True, exist_ok=True)
        node = cloud.add_node(
            name,
            ports[name],
            {
                "HYPERVISOR": "test",
                "KOALA_LIBVIRT_URI": write_node_file(data_dir / "node.xml"),
                "KOALA_WALRUS_URL": "",
                "MAX_CORES": cores,
                "MAX_MEM": 2048,
                "MAX_DISK": 100,
                "SWAP_SIZE": 0,
                "KOALA_NC_CONFIG_DRIVE": "false",
                "KOALA_NC_MONITOR_SECONDS": 1,
                **(node_settings or {}),
            },
        )
        seed_image(node)
        nodes[name] = node
    if start:
        for node in nodes.values():
            node.start()
        cloud.start("cc")
    return cloud, nodes, clc


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three NCs with 12, 12 and 6 cores (30 m1.small in all) under one CC with ROUNDROBIN."""
    cloud, nodes, clc = make_cluster(tmp_path_factory.mktemp("cc") / "cloud", {"a": 12, "b": 12, "c": 6})
    try:
        handle = Cluster(cloud, nodes, clc)
        handle.wait(lambda: all(n.state == "UP" for n in handle.nodes_info().values()), "three nodes UP")
        yield handle
    finally:
        cloud.stop()
        clc.stop()
