"""The services' listener (common/http_site.py) with a real aiohttp application over loopback: a client that
half-closes after its request is answered, one that half-closes inside its body is dropped after the grace, and
ordinary keep-alive clients are served as before."""

from __future__ import annotations

import asyncio
import socket
import time

from aiohttp import web

from common.http_site import ConnectionGuard, HttpSite, Limits

GRACE = 0.5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _serve(bodies: list[bytes | BaseException]) -> tuple[web.AppRunner, int]:
    async def echo(request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except Exception as err:  # the connection went away while the body was read
            bodies.append(err)
            raise
        bodies.append(body)
        return web.Response(text=f"got {len(body)}\n")

    guard = ConnectionGuard(Limits(answer_grace=GRACE))
    app = web.Application(middlewares=[guard.middleware])
    app.router.add_route("*", "/echo", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    await HttpSite(runner, "127.0.0.1", port, guard).start()
    return runner, port


async def _exchange(port: int, request: bytes, half_close: bool) -> tuple[bytes, float]:
    """Send `request`, optionally shut down the write side, read until the server closes; answer and seconds."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(request)
    if half_close:
        writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    return answer, time.monotonic() - started


def test_half_closed_request_is_answered_and_a_cut_body_is_dropped_after_the_grace() -> None:
    async def scenario() -> None:
        bodies: list[bytes | BaseException] = []
        runner, port = await _serve(bodies)
        try:
            for _ in range(20):  # aiohttp alone lost nearly every one of these
                answer, _ = await _exchange(port, b"GET /echo HTTP/1.0\r\nHost: t\r\n\r\n", half_close=True)
                assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b"got 0\n"), answer
            answer, _ = await _exchange(
                port, b"POST /echo HTTP/1.0\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello", half_close=True
            )
            assert answer.endswith(b"got 5\n"), answer
            # 3 of 100 promised bytes, then EOF: no answer, the connection closed after the grace, not held open.
            answer, seconds = await _exchange(
                port, b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc", half_close=True
            )
            assert answer == b"" and GRACE * 0.8 <= seconds < GRACE + 5, (answer, seconds)
            for _ in range(100):
                if len(bodies) == 22:
                    break
                await asyncio.sleep(0.02)
            assert isinstance(bodies[-1], BaseException), bodies[-1]
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


def test_keep_alive_clients_are_served_as_before() -> None:
    async def scenario() -> None:
        runner, port = await _serve([])
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for body in (b"one", b"three"):
                writer.write(b"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
                assert head.startswith(b"HTTP/1.1 200"), head
                length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
                             .split(b":")[1])  # fmt: skip
                assert await reader.readexactly(length) == b"got %d\n" % len(body)
            writer.close()
        finally:
            await runner.cleanup()

    asyncio.run(scenario())
