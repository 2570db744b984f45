"""Connection limits and timeouts, on every service: thousands of idle connections starve nothing and are closed
by the server, a full service answers 503 in its API's format, slow clients are dropped, a connect-and-close costs
no descriptor, and running out of descriptors is logged quietly."""

from __future__ import annotations

import asyncio
import ctypes
import os
import resource
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config

from common.messages.service import DescribeServiceResponse
from tests.harness import Cloud

IDLE, HEADER, BODY_IDLE = 8.0, 2.0, 2.0
PER_PEER, TOTAL = 100, 4000
IDLE_CONNECTIONS = 3000
SETTINGS = {
    "KOALA_HTTP_IDLE_SECONDS": IDLE,
    "KOALA_HTTP_HEADER_SECONDS": HEADER,
    "KOALA_HTTP_BODY_IDLE_SECONDS": BODY_IDLE,
    "KOALA_HTTP_MAX_CONNECTIONS_PER_PEER": PER_PEER,
    "KOALA_HTTP_MAX_CONNECTIONS": TOTAL,
}
ROLES = ("clc", "walrus", "cc", "nc")
BUSY_CODES = {"clc": b"<Code>Unavailable</Code>", "walrus": b"<Code>ServiceUnavailable</Code>"}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this test holds thousands of sockets itself
    cloud = Cloud(tmp_path_factory.mktemp("connections") / "cloud", extra={role: SETTINGS for role in ROLES})
    try:
        cloud.start()
        yield cloud
    finally:
        cloud.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _address(cloud: Cloud, role: str) -> tuple[str, int]:
    parts = urlsplit(cloud.url(role))
    return parts.hostname or "127.0.0.1", parts.port or 80


Connections = list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]


async def _open(address: tuple[str, int], sources: list[str], per_source: int) -> Connections:
    """Connections from each source address (loopback has all of 127/8), kept open and silent."""
    semaphore = asyncio.Semaphore(500)

    async def one(source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with semaphore:
            return await asyncio.open_connection(*address, local_addr=(source, 0))

    return await asyncio.gather(*(one(source) for source in sources for _ in range(per_source)))


def _signed_call(cloud: Cloud, role: str) -> None:
    rc = cloud.admin_credentials()
    options = {
        "aws_access_key_id": rc["EC2_ACCESS_KEY"],
        "aws_secret_access_key": rc["EC2_SECRET_KEY"],
        "region_name": "eucalyptus",
        "config": Config(retries={"max_attempts": 1}, connect_timeout=10, read_timeout=10),
    }
    if role == "clc":
        zones = boto3.client("ec2", endpoint_url=cloud.url("clc"), **options).describe_availability_zones()
        assert zones["AvailabilityZones"]
    elif role == "walrus":
        boto3.client("s3", endpoint_url=cloud.url("walrus"), **options).list_buckets()
    else:

        async def describe() -> DescribeServiceResponse:
            client = cloud.admin_client()
            try:
                return await client.call(cloud.url(role), "DescribeService", None, DescribeServiceResponse, timeout=10)
            finally:
                await client.close()

        assert asyncio.run(describe()).role == role


def _healthz(cloud: Cloud, role: str) -> None:
    with urllib.request.urlopen(cloud.url(role) + "/healthz", timeout=10) as response:
        assert response.read() == b"ok\n"


async def _answers(connections: Connections, count: int) -> list[bytes]:
    """What the last `count` connections are answered to a request."""
    answers = []
    for reader, writer in connections[-count:]:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: koala\r\n\r\n")
        answers.append(await asyncio.wait_for(reader.read(4096), 10))
    return answers


@pytest.mark.parametrize("role", ROLES)
def test_idle_connections_starve_nothing_and_are_closed(cloud: Cloud, role: str) -> None:
    address = _address(cloud, role)

    async def scenario() -> None:
        sources = [f"127.0.1.{n}" for n in range(1, IDLE_CONNECTIONS // PER_PEER + 1)]
        idle = await _open(address, sources, PER_PEER)  # as many as each address may have
        try:
            await asyncio.to_thread(_healthz, cloud, role)
            await asyncio.to_thread(_signed_call, cloud, role)
            # One address more than its share: refused at once with a 503 in the API's format.
            answer = (await _answers(await _open(address, [sources[0]], 1), 1))[0]
            assert answer.startswith(b"HTTP/1.1 503"), answer
            assert BUSY_CODES.get(role, b'"code":"ServiceUnavailable"') in answer, answer
            assert b"too many from your address" in answer
            # The idle ones are closed by the server (EOF), within the idle timeout and a sweep.
            ends = await asyncio.gather(*(asyncio.wait_for(r.read(), IDLE + 20) for r, _ in idle))
            assert all(end == b"" for end in ends)
        finally:
            for _, writer in idle:
                writer.close()

    asyncio.run(scenario())
    _healthz(cloud, role)


def test_slow_clients_are_dropped(cloud: Cloud) -> None:
    address = _address(cloud, "clc")

    def closed_while_trickling(head: bytes, trickle: bytes) -> float:
        """Seconds until the server closed a connection that sent `head` and then a byte of `trickle` per 0.5 s."""
        started = time.monotonic()
        with socket.create_connection(address, timeout=30) as conn:
            conn.sendall(head)
            for byte in trickle:
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return time.monotonic() - started
                conn.settimeout(0.5)
                try:
                    if conn.recv(4096) == b"":
                        return time.monotonic() - started
                except TimeoutError:
                    pass
                except OSError:
                    return time.monotonic() - started
        return float("inf")

    # Slow headers: a byte every half second never finishes them.
    assert closed_while_trickling(b"GET /healthz HTTP/1.1\r\n", b"X-Slow: " + b"a" * 60) < HEADER + 10
    # A body that stops: 10 of 1000 bytes, then nothing (the trickle is of header-free bytes, sent only once).
    head = b"POST / HTTP/1.1\r\nHost: koala\r\nContent-Length: 1000\r\n\r\n0123456789"
    started = time.monotonic()
    with socket.create_connection(address, timeout=BODY_IDLE + 15) as conn:
        conn.sendall(head)
        assert conn.recv(4096) == b""
    assert time.monotonic() - started < BODY_IDLE + 15


def _open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.parametrize("role", ["clc", "nc"])
def test_connect_and_close_costs_nothing(cloud: Cloud, role: str) -> None:
    """With no request asked, a client's close is the end: no 30 s half-close grace per connection."""
    address = _address(cloud, role)
    pid = cloud.processes[role].pid
    before = _open_descriptors(pid)
    for _ in range(300):
        with socket.create_connection(address, timeout=10) as conn:
            conn.shutdown(socket.SHUT_WR)
            assert conn.recv(10) == b""  # closed by the server at once, not after the grace
    time.sleep(0.5)
    assert _open_descriptors(pid) < before + 30


def _limit_descriptors(count: int):
    def preexec() -> None:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # die with the test, as the harness does
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))

    return preexec


def test_descriptor_exhaustion_is_logged_quietly(cloud: Cloud, tmp_path: Path) -> None:
    """The NC restarted with only 300 descriptors, then flooded: refusals and failed accepts, a few log lines."""
    cloud.stop("nc")
    log_before = len(cloud.log("nc"))
    cloud.processes["nc"] = cloud.aio.start("nc", preexec_fn=_limit_descriptors(300))
    cloud.aio.wait_healthy({"nc": cloud.processes["nc"]})
    address = _address(cloud, "nc")
    try:

        async def flood() -> None:
            writers = []
            for _ in range(3):
                for _ in range(400):
                    try:
                        _, writer = await asyncio.wait_for(asyncio.open_connection(*address), 5)
                        writers.append(writer)
                    except (OSError, TimeoutError):
                        pass
                await asyncio.sleep(1.0)
            for writer in writers:
                writer.close()

        asyncio.run(flood())
        time.sleep(2)
        _healthz(cloud, "nc")
        log = cloud.log("nc")[log_before:]
        assert "Traceback" not in log, log[-3000:]
        assert "connections refused with 503" in log
        assert len(log.splitlines()) < 30, log[-3000:]
    finally:
        cloud.stop("nc")
        cloud.start("nc")
