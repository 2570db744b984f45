"""Several hosts on one machine: the CLC, Walrus, a CC and two NCs, each in its own network namespace with its own
address on one LAN, started with the same command lines as the systemd units and talking only over that LAN.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.install_cmd import TEMPLATES, render_unit
from common import pki
from common.config import render_conf
from tests.network.topology import Topology

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

LAN = "10.213.0"
HOSTS = {  # namespace role -> (service role, component id, address)
    "clc": ("clc", "clc", f"{LAN}.11"),
    "walrus": ("walrus", "walrus", f"{LAN}.12"),
    "cc": ("cc", "cc-zone1", f"{LAN}.13"),
    "nodea": ("nc", "nc-nodea", f"{LAN}.21"),
    "nodeb": ("nc", "nc-nodeb", f"{LAN}.22"),
}
PROBE = Path(__file__).with_name("describe_probe.py")


def unit_command(role: str, config: Path) -> list[str]:
    """The ExecStart of the role's systemd unit, with this test's configuration file."""
    unit = render_unit(role, config.parent, config.parent, Path(sys.prefix) / "bin" / "koala")
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = exec_start.removeprefix("ExecStart=").split()
    argv[argv.index("--config") + 1] = str(config)
    return argv


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Topology, Path]]:
    work = tmp_path_factory.mktemp("multihost")
    topology = Topology(work)
    processes: list[subprocess.Popen] = []
    try:
        topology.add_ns("lan")
        topology.run("lan", "ip", "link", "add", "br0", "type", "bridge")
        topology.run("lan", "ip", "link", "set", "br0", "up")
        for index, (name, (_, _, address)) in enumerate(HOSTS.items()):
            topology.add_ns(name)
            topology.veth(name, "eth0", "lan", f"port{index}")
            topology.run("lan", "ip", "link", "set", f"port{index}", "master", "br0")
            topology.run(name, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
        topology.add_ns("admin")  # where the operator's tools run
        topology.veth("admin", "eth0", "lan", "portadmin")
        topology.run("lan", "ip", "link", "set", "portadmin", "master", "br0")
        topology.run("admin", "ip", "addr", "add", f"{LAN}.2/24", "dev", "eth0")

        ca = pki.PkiDir(work / "pki")
        ca.init()
        ca.ensure("koala-admin", "admin")
        url = {
            name: f"http://{address}:{TEMPLATES[role][_port_key(role)]}" for name, (role, _, address) in HOSTS.items()
        }
        for name, (role, subject, address) in HOSTS.items():
            ca.ensure(subject, role)
            state = work / "state" / name
            state.mkdir(parents=True)
            peers = {
                "clc": {"KOALA_WALRUS_URL": url["walrus"], "KOALA_CLUSTERS": f"zone1={url['cc']}"},
                "walrus": {"KOALA_CLC_URL": url["clc"]},
                "cc": {"KOALA_CLC_URL": url["clc"], "NODES": f"{HOSTS['nodea'][2]} {HOSTS['nodeb'][2]}"},
                "nc": {"KOALA_CC_URL": url["cc"], "KOALA_WALRUS_URL": url["walrus"], "HYPERVISOR": "test"},
            }[role]
            values = {
                **TEMPLATES[role],
                **peers,
                "KOALA_SERVICE_ID": subject,
                "KOALA_BIND": address,
                "KOALA_STATE_DIR": state,
                "KOALA_PKI_DIR": ca.path,
                "KOALA_PEER_POLL_SECONDS": 1,
            }
            config = work / f"{name}.conf"
            config.write_text(render_conf(values))
            log = (work / f"{name}.log").open("wb")
            processes.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", topology.ns(name), *unit_command(role, config)],
                    stdout=log,
                    stderr=log,
                    stdin=subprocess.DEVNULL,
                )
            )
        yield topology, work
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        topology.cleanup()


def _port_key(role: str) -> str:
    return {"clc": "KOALA_CLC_PORT", "walrus": "KOALA_WALRUS_PORT", "cc": "CC_PORT", "nc": "NC_PORT"}[role]


def describe_all(topology: Topology, work: Path) -> dict:
    urls = [f"http://{address}:{TEMPLATES[role][_port_key(role)]}" for role, _, address in HOSTS.values()]
    result = topology.run("admin", sys.executable, str(PROBE), str(work / "pki"), *urls, check=False)
    return json.loads(result.stdout) if result.returncode == 0 else {"error": result.stderr}


def test_every_host_reaches_its_peers_over_the_lan(hosts: tuple[Topology, Path]) -> None:
    topology, work = hosts
    deadline = time.monotonic() + 60
    while True:
        answers = describe_all(topology, work)
        ready = "error" not in answers and all(
            "error" not in a and a["peers"] and all(p["reachable"] for p in a["peers"])
            for a in answers.values()
            if a.get("role") != "nc"
        )
        if ready or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    logs = {name: (work / f"{name}.log").read_text(errors="replace")[-2000:] for name in HOSTS}
    assert ready, (answers, logs)
    by_id = {a["id"]: a for a in answers.values()}
    assert set(by_id) == {"clc", "walrus", "cc-zone1", "nc-nodea", "nc-nodeb"}
    assert {p["id"] for p in by_id["clc"]["peers"]} == {"walrus", "cc-zone1"}
    assert {p["id"] for p in by_id["cc-zone1"]["peers"]} >= {"nc-nodea", "nc-nodeb"}
    assert {p["id"] for p in by_id["walrus"]["peers"]} == {"clc"}
    # Only the LAN carries the traffic: the CLC's namespace has no route anywhere else.
    routes = topology.run("clc", "ip", "-j", "route").stdout
    assert [r["dst"] for r in json.loads(routes)] == [f"{LAN}.0/24"]
