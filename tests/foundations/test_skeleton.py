"""The walking skeleton: four real service processes find each other and answer signed calls."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from common.messages.service import DescribeServiceResponse
from tests.harness import Cloud, free_port_run


def test_services_report_each_other_reachable(cloud: Cloud) -> None:
    answers = cloud.aio.wait_peers(timeout=20)
    by_role = {role: answer for role, answer in answers.items()}
    assert all(isinstance(a, DescribeServiceResponse) for a in by_role.values()), by_role
    assert {p.id for p in by_role["clc"].peers} == {"walrus", "cc-zone1"}
    assert {p.id for p in by_role["cc"].peers} == {"nc-node1"}
    assert {p.id for p in by_role["walrus"].peers} == {"clc"}
    for answer in by_role.values():
        assert all(p.reachable for p in answer.peers)
        assert answer.uptime >= 0


def test_healthz_is_unsigned_and_reveals_nothing(cloud: Cloud) -> None:
    with urllib.request.urlopen(cloud.url("clc") + "/healthz", timeout=5) as response:
        assert response.status == 200
        assert response.read() == b"ok\n"


def test_a_client_that_half_closes_after_its_request_is_answered(cloud: Cloud) -> None:
    # busybox nc in a guest sends an HTTP/1.0 request, shuts down its side and reads: aiohttp on its own would drop
    # the connection at that EOF (it did, for the metadata service, in 98 of 100 tries over loopback). Walrus keeps
    # aiohttp's way: S3 clients do not half-close, and an upload cut short should fail at once.
    for role in ("clc", "cc", "nc"):
        address = urlsplit(cloud.url(role))
        for _ in range(10):
            with socket.create_connection((address.hostname, address.port), timeout=5) as conn:
                conn.sendall(b"GET /healthz HTTP/1.0\r\nHost: koala\r\n\r\n")
                conn.shutdown(socket.SHUT_WR)
                answer = b"".join(iter(lambda: conn.recv(4096), b""))
            assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b"\r\n\r\nok\n"), (role, answer)


def test_peer_down_is_reported_and_recovers(cloud: Cloud) -> None:
    cloud.stop("walrus")

    async def clc_view() -> DescribeServiceResponse:
        client = cloud.admin_client()
        try:
            return await client.call(cloud.url("clc"), "DescribeService", None, DescribeServiceResponse)
        finally:
            await client.close()

    for _ in range(100):
        walrus = {p.role: p for p in asyncio.run(clc_view()).peers}["walrus"]
        if not walrus.reachable:
            break
        asyncio.run(asyncio.sleep(0.2))
    assert not walrus.reachable and walrus.last_error
    cloud.start("walrus")
    for _ in range(100):
        walrus = {p.role: p for p in asyncio.run(clc_view()).peers}["walrus"]
        if walrus.reachable:
            break
        asyncio.run(asyncio.sleep(0.2))
    assert walrus.reachable


def koala(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=120)


def test_koala_up_status_down(tmp_path: Path) -> None:
    state = tmp_path / "state"
    try:
        up = koala(
            "up", "--state-dir", str(state), "--detach", "--no-image", "--network", "system",
            "--port-base", str(free_port_run(4)),
        )  # fmt: skip
        assert up.returncode == 0, up.stderr
        endpoints = json.loads((state / "endpoints.json").read_text())
        assert set(endpoints) == {"clc", "walrus", "cc", "nc"}
        status = koala("status", "--state-dir", str(state), "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        report = json.loads(status.stdout)
        assert all(entry["running"] for entry in report.values())
        assert all(peer["reachable"] for peer in report["clc"]["peers"])
        again = koala(
            "up", "--state-dir", str(state), "--detach", "--no-image"
        )  # reuses the state, starts nothing twice
        assert again.returncode == 0, again.stderr
        assert json.loads((state / "endpoints.json").read_text()) == endpoints
    finally:
        down = koala("down", "--state-dir", str(state))
    try:
        assert down.returncode == 0
        assert "stopped" in down.stdout
        status = koala("status", "--state-dir", str(state))
        assert status.returncode == 1
        assert "not running" in status.stdout
    finally:  # the zone's XFS volume image stays mounted until the purge
        purge = koala("down", "--purge", "--state-dir", str(state))
    assert purge.returncode == 0 and not state.exists(), purge.stdout + purge.stderr
