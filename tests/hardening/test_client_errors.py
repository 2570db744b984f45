"""Client-caused errors (malformed HTTP, a client dropping mid-body) are answered in the API's error format where an
answer is possible, and logged at INFO in one line: no ERROR, no traceback."""

from __future__ import annotations

import socket
import struct
import time
from urllib.parse import urlsplit

import pytest

from tests.harness import Cloud

ROLES = ("clc", "walrus", "cc", "nc")
# What each service's errors look like: EC2 error XML, S3 error XML, JSON for internal calls.
PATH = {"clc": "/", "walrus": "/", "cc": "/internal/DescribeService", "nc": "/internal/DescribeService"}
FORMAT = {"clc": b"<Response><Errors><Error><Code>", "walrus": b"<Error><Code>", "cc": b'{"code":', "nc": b'{"code":'}


def _exchange(cloud: Cloud, role: str, request: bytes) -> bytes:
    parts = urlsplit(cloud.url(role))
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as conn:
        conn.sendall(request)
        return b"".join(iter(lambda: conn.recv(65536), b""))


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _drop_mid_body(cloud: Cloud, role: str, path: str) -> None:
    """Headers promising 1000 bytes, 10 of them, then a reset (SO_LINGER 0): the client is gone."""
    parts = urlsplit(cloud.url(role))
    conn = socket.create_connection((parts.hostname, parts.port), timeout=10)
    conn.sendall(
        f"POST {path} HTTP/1.1\r\nHost: koala\r\nConnection: close\r\nContent-Length: 1000\r\n\r\n0123456789".encode()
    )
    time.sleep(0.2)  # the handler is reading the body
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


@pytest.mark.parametrize("role", ROLES)
def test_client_errors_are_answered_in_the_api_format_and_logged_quietly(module_cloud: Cloud, role: str) -> None:
    cloud = module_cloud
    before = len(cloud.log(role))
    bad_length = _exchange(
        cloud, role, b"POST / HTTP/1.1\r\nHost: koala\r\nConnection: close\r\nContent-Length: abc\r\n\r\n"
    )
    assert _status(bad_length) == 400 and FORMAT[role] in bad_length, bad_length
    path = PATH[role].encode()
    head = b" HTTP/1.1\r\nHost: koala\r\nConnection: close\r\n"
    long_header = b"GET " + path + head + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    answer = _exchange(cloud, role, long_header)
    assert _status(answer) == 400 and FORMAT[role] in answer, answer[:300]
    bad_type = _exchange(
        cloud,
        role,
        b"POST " + path + head + b"Content-Type: multipart/form-data\r\nContent-Length: 3\r\n\r\nabc",
    )
    assert FORMAT[role] in bad_type and _status(bad_type) < 500, bad_type
    for path in ("/internal/DescribeService", "/"):
        _drop_mid_body(cloud, role, path)
    time.sleep(1.0)
    log = cloud.log(role)[before:]
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
