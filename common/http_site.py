"""The TCP listener the CLC, the CC and the NC serve their aiohttp applications on (Walrus keeps aiohttp's own: S3
clients never half-close, and an upload cut short must fail at once).

aiohttp closes a connection as soon as the client half-closes it (asyncio's default for a protocol whose
`eof_received` returns None), so a client that sends its request and then shuts down its write side, as HTTP/1.0
clients such as busybox `nc` do, gets no answer at all, or one only when it wins a race. EC2's metadata service
answers such clients, and minimal guest images use them: here a half-close only ends what the client sends, and
the connection stays open for the answer for up to `ANSWER_GRACE` seconds (a client that half-closes in the middle of
its request body, which aiohttp would otherwise wait for, is dropped then).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

ANSWER_GRACE = 30.0


class _AnswerAfterHalfClose(asyncio.Protocol):
    """aiohttp's request handler, except that the client's EOF leaves the response side of the connection open."""

    def __init__(self, handler: asyncio.Protocol, grace: float):
        self.handler, self.grace = handler, grace
        self.transport: asyncio.BaseTransport | None = None
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.handler.data_received(data)

    def eof_received(self) -> bool:
        # Keep the transport open: aiohttp closes it after an HTTP/1.0 answer, and the deadline bounds the rest.
        if self.transport is not None and self.deadline is None:
            self.deadline = asyncio.get_running_loop().call_later(self.grace, self.transport.close)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()


class HttpSite(web.BaseSite):
    """Like aiohttp's TCPSite (address reuse on), with the handler above; `host` may list several addresses."""

    __slots__ = ("_grace", "_host", "_port")

    def __init__(self, runner: web.BaseRunner, host: str | list[str], port: int, answer_grace: float = ANSWER_GRACE):
        super().__init__(runner)
        self._host, self._port, self._grace = host, port, answer_grace

    @property
    def name(self) -> str:
        host = self._host if isinstance(self._host, str) else self._host[0]
        return f"http://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        make_handler: Callable[[], asyncio.Protocol] | None = self._runner.server
        assert make_handler is not None  # BaseSite refuses a runner that was not set up
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _AnswerAfterHalfClose(make_handler(), self._grace), self._host, self._port, reuse_address=True
        )
