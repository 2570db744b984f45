"""The TCP listener every service serves its aiohttp application on: connection limits, timeouts, quiet refusals.

- Limits: at most `max_connections` connections, and `max_per_peer` from one address; a connection beyond them
  gets a 503 in the service's error format at once and is closed (never a stall, never a descriptor spent on a
  request we cannot serve). The service raises its descriptor limit at start and keeps the connection limit below
  it (`fit_descriptor_limit`).
- Timeouts: a connection with no request (fresh or kept alive) is closed after `idle_seconds` (aiohttp's own
  keep-alive timer, which knows when an answer is finished); a request whose headers take longer than
  `header_seconds` from their first byte, or whose body sends nothing for `body_idle_seconds`, is dropped.
- Half-close: aiohttp closes a connection as soon as the client half-closes it, so a client that sends its request
  and then shuts down its write side (HTTP/1.0 clients such as busybox `nc` in guests, which EC2's metadata
  service answers) gets no answer. While an answer is owed, the connection stays open for it for up to
  `answer_grace` seconds; with none owed it closes at once (a connect-and-close client costs nothing).
  `answer_grace=None` keeps aiohttp's way (Walrus: S3 clients do not half-close, and an upload cut short must fail).
- Client errors (malformed HTTP, a client gone mid-request) are logged at INFO in one line, without a traceback,
  and malformed requests are answered in the service's error format; refusals and descriptor exhaustion are
  logged at most once per `LOG_EVERY` seconds.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import resource
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("koala.http")

ANSWER_GRACE = 30.0
LOG_EVERY = 10.0  # seconds between two log lines about the same exhaustion
SWEEP_SECONDS = 1.0
REFUSAL_LINGER = 1.0  # a refused client has this long to read its 503 before the connection closes
LISTEN_BACKLOG = 4096  # connections the kernel queues for accept (capped by net.core.somaxconn); a burst beyond
# the queue would be left half-open on the server side, its clients waiting for SYN-ACK retransmissions
DESCRIPTOR_RESERVE = 512  # descriptors kept for databases, logs, libvirt and outgoing calls
EXHAUSTION_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

# (status, code, message) -> (body, content type): each service answers in its API's error format.
ErrorRenderer = Callable[[int, str, str], tuple[bytes, str]]


def json_error(status: int, code: str, message: str) -> tuple[bytes, str]:
    return json.dumps({"code": code, "message": message}, separators=(",", ":")).encode(), "application/json"


@dataclass(frozen=True)
class Limits:
    max_connections: int = 8192
    max_per_peer: int = 1_000
    idle_seconds: float = 30.0
    header_seconds: float = 10.0
    body_idle_seconds: float = 30.0
    answer_grace: float | None = ANSWER_GRACE

    def fit_descriptor_limit(self) -> Limits:
        """Raise this process's descriptor limit to its hard limit; keep the connection limit below it."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        if wanted > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
                soft = wanted
            except (ValueError, OSError):
                pass
        # Half of what is left after the reserve goes to connections: refused ones also hold one for a moment.
        room = max((soft - DESCRIPTOR_RESERVE) // 2, 16)
        if room >= self.max_connections:
            return self
        log.warning("descriptor limit %d: at most %d connections (not %d)", soft, room, self.max_connections)
        return replace(self, max_connections=room, max_per_peer=min(self.max_per_peer, room))


class RateLimitedLog:
    """One WARNING per `every` seconds for a recurring condition, saying how often it happened meanwhile."""

    def __init__(self, what: str, every: float = LOG_EVERY):
        self.what, self.every = what, every
        self.count, self.logged_at = 0, float("-inf")

    def note(self, detail: str) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.logged_at >= self.every:
            log.warning("%s (%d in the last %.0f s): %s", self.what, self.count, self.every, detail)
            self.count, self.logged_at = 0, now


_exhaustion = RateLimitedLog("out of descriptors or memory while accepting connections")


def install_exhaustion_handler(loop: asyncio.AbstractEventLoop) -> None:
    """asyncio logs a traceback for every failed accept(); a flood of them filled 52 MB of log in 30 s."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in EXHAUSTION_ERRNOS:
            _exhaustion.note(exc.strerror or str(exc))
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


class ConnectionGuard:
    """Counts the connections of one listener, applies the limits and timeouts; its middleware marks requests."""

    def __init__(self, limits: Limits = Limits(), render_error: ErrorRenderer = json_error):
        self.limits, self.render_error = limits, render_error
        self.connections: dict[asyncio.BaseTransport, _Connection] = {}
        self.per_peer: Counter[str] = Counter()
        self.refusals = RateLimitedLog("connections refused with 503")
        self.timeouts = RateLimitedLog("connections dropped by a timeout")

    @web.middleware
    async def middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]) -> Any:
        conn = self.connections.get(request.transport)  # type: ignore[arg-type]
        if conn is None:
            return await handler(request)
        conn.request, conn.receiving_since = request, None
        try:
            return await handler(request)
        finally:
            conn.request = None

    def busy_answer(self, why: str) -> bytes:
        body, content_type = self.render_error(503, "ServiceUnavailable", f"too many connections ({why}); retry")
        head = (
            f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Retry-After: 1\r\nConnection: close\r\n\r\n"
        )
        return head.encode() + body

    def sweep(self, now: float) -> None:
        for conn in list(self.connections.values()):
            conn.check(now)


class _Connection(asyncio.Protocol):
    """One client connection: aiohttp's request handler inside, with the guard's limits and timeouts around it."""

    def __init__(self, guard: ConnectionGuard, make_handler: Callable[[], RequestHandler]):
        self.guard, self.make_handler = guard, make_handler
        self.handler: RequestHandler | None = None
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.last_received = 0.0
        self.receiving_since: float | None = None  # first byte of a request whose headers are not all in yet
        self.request: web.BaseRequest | None = None  # the request being handled
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peername = transport.get_extra_info("peername")
        self.peer = str(peername[0]) if isinstance(peername, tuple) else ""
        guard, limits = self.guard, self.guard.limits
        full = (
            "this service is full"
            if len(guard.connections) >= limits.max_connections
            else "too many from your address"
            if guard.per_peer[self.peer] >= limits.max_per_peer
            else ""
        )
        if full:
            guard.refusals.note(f"{full}: {len(guard.connections)} open, {guard.per_peer[self.peer]} from {self.peer}")
            try:
                transport.write(guard.busy_answer(full))  # type: ignore[attr-defined]
                transport.write_eof()  # type: ignore[attr-defined]
            except OSError:  # the client is already gone
                transport.close()
                return
            self.deadline = asyncio.get_running_loop().call_later(REFUSAL_LINGER, transport.close)
            return
        guard.connections[transport] = self
        guard.per_peer[self.peer] += 1
        self.handler = self.make_handler()
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.handler is None:
            return  # refused: what the client sends is dropped
        self.last_received = now = asyncio.get_running_loop().time()
        if self.receiving_since is None and self.request is None:
            self.receiving_since = now
        self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        if self.handler is None or self.transport is None:
            return None  # refused: close now
        if self.guard.limits.answer_grace is None:
            self.handler.eof_received()
            return None
        owed = self.receiving_since is not None or self.request is not None
        if not owed and not self.transport.get_write_buffer_size():
            return None  # nothing asked, nothing being answered: close at once
        # Keep the transport open: aiohttp closes it after an HTTP/1.0 answer, and the deadline bounds the rest.
        if self.deadline is None:
            self.deadline = asyncio.get_running_loop().call_later(self.guard.limits.answer_grace, self.transport.close)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        if self.handler is None:
            return
        guard = self.guard
        if guard.connections.pop(self.transport, None) is not None:  # type: ignore[arg-type]
            guard.per_peer[self.peer] -= 1
            if guard.per_peer[self.peer] <= 0:
                del guard.per_peer[self.peer]
        self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()

    def check(self, now: float) -> None:
        """Drop the connection if its client is too slow (called by the guard's sweep)."""
        transport, limits = self.transport, self.guard.limits
        if transport is None or transport.is_closing():
            return
        if self.request is not None:
            content = self.request.content
            if content.is_eof() or not transport.is_reading():
                self.last_received = now  # nothing owed by the client, or we are the ones not reading
            elif now - self.last_received > limits.body_idle_seconds:
                self._drop(f"request body idle for {limits.body_idle_seconds:.0f} s")
        elif self.receiving_since is not None and now - self.receiving_since > limits.header_seconds:
            self._drop(f"request headers not complete after {limits.header_seconds:.0f} s")

    def _drop(self, why: str) -> None:
        self.guard.timeouts.note(f"{self.peer}: {why}")
        assert self.transport is not None
        self.transport.close()


class QuietRequestHandler(RequestHandler):
    """aiohttp's handler, except that client errors are one INFO line and answered in the service's format."""

    render_error: ErrorRenderer = staticmethod(json_error)

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if isinstance(exc, ConnectionError):
            reason = "the client went away"
            log.info("%s %s from %s: %s (%s)", request.method, request.path, request.remote, reason, exc)
        elif status >= 500:
            return super().handle_error(request, status, exc, message)
        else:
            # aiohttp's parser says what is wrong on its first line, then quotes the request: not that part.
            reason = ((message or str(exc) or "").strip().splitlines() or ["malformed request"])[0]
            reason = reason.split(" b'", 1)[0].split(' b"', 1)[0][:200]
            log.info("bad request from %s: %s", request.remote, reason)
        body, content_type = self.render_error(status, "InvalidRequest", f"malformed HTTP request: {reason}")
        response = web.Response(status=status if status < 500 else 400, body=body, content_type=content_type)
        response.force_close()
        return response


class HttpSite(web.BaseSite):
    """Like aiohttp's TCPSite (address reuse on), with the guard's limits and timeouts; `host` may list several
    addresses (one guard counts the connections of all)."""

    __slots__ = ("_guard", "_host", "_port", "_sock", "_sweeper")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | list[str],
        port: int,
        guard: ConnectionGuard,
        sock: socket.socket | None = None,
    ):
        super().__init__(runner)
        self._host, self._port, self._guard = host, port, guard
        self._sock = sock  # a listening socket made by someone else (in another network namespace): used as is
        self._sweeper: asyncio.Task[Any] | None = None

    @property
    def name(self) -> str:
        if self._sock is not None:
            host, port = self._sock.getsockname()[:2]
            return f"http://{host}:{port}"
        host = self._host if isinstance(self._host, str) else self._host[0]
        return f"http://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None  # BaseSite refuses a runner that was not set up
        loop = asyncio.get_running_loop()
        # The handler's settings (keep-alive timeout, header limits) as the runner was given them.
        options = getattr(server, "_kwargs", {})
        render = staticmethod(self._guard.render_error)
        handler_class: type[QuietRequestHandler] = type("Handler", (QuietRequestHandler,), {"render_error": render})

        def make_handler() -> RequestHandler:
            return handler_class(server, loop=loop, **options)

        if self._sock is not None:
            self._server = await loop.create_server(
                lambda: _Connection(self._guard, make_handler), sock=self._sock, backlog=LISTEN_BACKLOG
            )
        else:
            self._server = await loop.create_server(
                lambda: _Connection(self._guard, make_handler),
                self._host,
                self._port,
                reuse_address=True,
                backlog=LISTEN_BACKLOG,
            )
        self._sweeper = asyncio.create_task(self._sweep(), name=f"connection sweep {self.name}")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await super().stop()

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            self._guard.sweep(loop.time())
