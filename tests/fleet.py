"""Scale set-ups for tests and benchmarks: simulated node fleets (`koala nc-fleet`, many real NC identities in one
process, each with its own certificate, port, state and test-driver host) and extra Cluster Controllers, all
real processes of a harness `Cloud`."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from common.config import parse_conf, render_conf
from common.messages.clusters import ClusterInfo, RegisterClusterRequest
from tests.clc.ec2_helpers import admin_call
from tests.harness import Cloud, ServiceProcess, die_with_parent, free_port, free_port_run
from tests.nc.support import node_file

# Fleet members poll their peers (CC, Walrus) rarely: 1,000 nodes at the harness's 1 s would be 2,000 calls a
# second on their own, each parsing the CC's answer that lists all its nodes, and the CC's node polls already tell
# both sides whether the other is there.
FLEET_PEER_POLL_SECONDS = 300


def fleet_ports(count: int) -> list[int]:
    """`count` consecutive free loopback ports for a fleet (chosen before the CC that lists them is configured)."""
    base = free_port_run(count)
    return list(range(base, base + count))


class NodeFleet(ServiceProcess):
    """`count` simulated nodes `nc-<name>-NNNN` in one `koala nc-fleet` process, reporting to `cc_url`; each node
    offers `cores` cores (MAX_CORES) of a test-driver host with `memory_gib` GiB."""

    role = "nc-fleet"

    def __init__(
        self,
        cloud: Cloud,
        name: str,
        ports: list[int],
        cc_url: str,
        cores: int,
        memory_gib: int = 64,
        extra: dict | None = None,
        log_level: str = "INFO",
    ):
        self.cloud, self.id, self.ports, self.log_level = cloud, f"fleet-{name}", ports, log_level
        self.url = f"http://127.0.0.1:{ports[0]}"
        self.urls = [f"http://127.0.0.1:{port}" for port in ports]
        self.conf_dir = cloud.dir / "conf" / self.id
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.conf_path = self.conf_dir
        self.log_path = cloud.dir / "logs" / f"{self.id}.log"
        self.node_ids = [f"nc-{name}-{n:04d}" for n in range(len(ports))]
        base = {key: s.value for key, s in parse_conf(cloud.aio.conf_path("nc").read_text()).items()}
        cloud.aio.pki.ensure_many(self.node_ids, "nc")
        for node_id, port in zip(self.node_ids, ports, strict=True):
            data_dir = cloud.dir / "data" / node_id
            data_dir.mkdir(parents=True, exist_ok=True)
            uri = node_file(data_dir / "node.xml", cpus=cores, memory_gib=memory_gib)
            values = {
                **base,
                "KOALA_SERVICE_ID": node_id,
                "KOALA_STATE_DIR": data_dir,
                "NC_PORT": port,
                "KOALA_CC_URL": cc_url,
                "HYPERVISOR": "test",
                "KOALA_LIBVIRT_URI": uri,
                "MAX_CORES": cores,
                "SWAP_SIZE": 64,
                "KOALA_PEER_POLL_SECONDS": FLEET_PEER_POLL_SECONDS,
                **(extra or {}),
            }
            conf = self.conf_dir / f"{node_id}.conf"
            conf.write_text(render_conf(values, f"Simulated node {node_id} of {self.id}, written by tests/fleet.py."))
        self.process = None

    @property
    def node_entries(self) -> str:
        """The nodes as a CC's NODES setting."""
        return " ".join(f"127.0.0.1:{port}" for port in self.ports)

    def spawn(self) -> subprocess.Popen:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cli", "nc-fleet", "--config-dir", str(self.conf_dir),
                 "--log-level", self.log_level],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=die_with_parent, cwd=self.cloud.dir,
            )  # fmt: skip
        return self.process

    def start(self, timeout: float = 300.0) -> None:
        """Spawn the fleet and wait until every node answers /healthz."""
        process = self.spawn()
        deadline = time.monotonic() + timeout
        waiting = list(self.urls)
        with ThreadPoolExecutor(16) as pool:
            while waiting:
                if process.poll() is not None:
                    raise RuntimeError(f"{self.id} exited with status {process.returncode}:\n{self.log()[-3000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.id}: {len(waiting)} nodes not healthy after {timeout:.0f} s")
                healthy = list(pool.map(_healthy, waiting))
                waiting = [url for url, ok in zip(waiting, healthy, strict=True) if not ok]
                if waiting:
                    time.sleep(0.2)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class ClusterProcess(ServiceProcess):
    """Another CC of `cloud` for zone `zone` over `nodes` (a NODES value); registered with the CLC by `register`."""

    role = "cc"

    def __init__(self, cloud: Cloud, zone: str, nodes: str, extra: dict | None = None):
        self.cloud, self.zone, self.id = cloud, zone, f"cc-{zone}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cloud.aio.pki.ensure(self.id, "cc")
        self.data_dir = cloud.dir / "data" / self.id
        self.data_dir.mkdir(parents=True, exist_ok=True)
        values = {
            "KOALA_SERVICE_ID": self.id,
            "KOALA_STATE_DIR": self.data_dir,
            "KOALA_PKI_DIR": cloud.aio.pki.path,
            "KOALA_BIND": "127.0.0.1",
            "CC_PORT": self.port,
            "KOALA_ZONE": zone,
            "KOALA_CLC_URL": cloud.url("clc"),
            "NODES": nodes,
            **(extra or {}),
        }
        self.conf_path = cloud.dir / "conf" / f"{self.id}.conf"
        self.conf_path.write_text(render_conf(values, f"Koala zone {zone}, written by tests/fleet.py."))
        self.log_path = cloud.dir / "logs" / f"{self.id}.log"
        self.process = None

    def register(self) -> ClusterInfo:
        request = RegisterClusterRequest(zone=self.zone, url=self.url, force=True)
        return admin_call(self.cloud, "RegisterCluster", request, ClusterInfo)
