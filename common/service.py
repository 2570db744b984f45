"""What every Koala service shares: identity, signed RPC, /healthz, DescribeService, peer monitoring, and a
systemd-friendly foreground runner (logs to stderr, clear exit on bad configuration, graceful SIGTERM)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from aiohttp import web

from common import pki
from common.backoff import Backoff
from common.config import ConfigError, ServiceConfig
from common.http_site import ConnectionGuard, HttpSite, Limits, install_exhaustion_handler, json_error
from common.logs import setup_logging
from common.loop_monitor import LoopMonitor
from common.messages.service import DescribeServiceResponse, PeerStatus
from common.rpc import Caller, PeerUnreachable, RpcClient, RpcError, RpcServer
from common.signing import Identity, TrustStore

VERSION = "0.1.0"
RequestHandlerFn = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
COMPONENT_AND_ADMIN_ROLES = frozenset({"clc", "cc", "nc", "walrus", "admin"})
log = logging.getLogger("koala.service")
ExceptionTypes = type[Exception] | tuple[type[Exception], ...]  # what isinstance takes


@dataclass
class Peer:
    url: str
    role: str
    status: PeerStatus


class PeerMonitor:
    """Calls each peer's DescribeService periodically; on failure retries with exponential backoff."""

    def __init__(self, client: RpcClient, interval: float):
        self.client, self.interval = client, interval
        self.peers: dict[str, Peer] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def set_peers(self, peers: list[tuple[str, str]]) -> None:
        wanted = {url.rstrip("/"): role for url, role in peers}
        for url in list(self.peers):
            if url not in wanted:
                self._tasks.pop(url).cancel()
                del self.peers[url]
        for url, role in wanted.items():
            if url not in self.peers:
                self.peers[url] = Peer(url, role, PeerStatus(url=url, role=role))
                self._tasks[url] = asyncio.create_task(self._watch(self.peers[url]), name=f"peer {url}")

    async def _watch(self, peer: Peer) -> None:
        backoff = Backoff(0.5, max(self.interval, 1.0) * 6)
        while True:
            try:
                answer = await self.client.call(
                    peer.url, "DescribeService", None, DescribeServiceResponse, timeout=5, expect_role=peer.role
                )
            except (RpcError, PeerUnreachable) as err:
                if peer.status.reachable or peer.status.last_error is None:
                    log.warning("peer %s (%s) unreachable: %s", peer.url, peer.role, err)
                peer.status = peer.status.model_copy(update={"reachable": False, "last_error": str(err)})
                await backoff.wait()
                continue
            if not peer.status.reachable:
                log.info("peer %s (%s) %s is reachable", peer.url, peer.role, answer.id)
            peer.status = PeerStatus(url=peer.url, role=peer.role, id=answer.id, reachable=True, last_seen=time.time())
            backoff.reset()
            await asyncio.sleep(self.interval)

    def statuses(self) -> list[PeerStatus]:
        return [peer.status for peer in self.peers.values()]

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()


class Service:
    """Base class of the four services. Subclasses set `role`, `config_class`, and override the hooks."""

    role: ClassVar[str]
    config_class: ClassVar[type[ServiceConfig]]
    client_max_size: ClassVar[int] = 1 << 20
    # The event loop a service runs on (None: asyncio's default). Walrus serves small objects on uvloop.
    loop_factory: ClassVar[Callable[[], asyncio.AbstractEventLoop] | None] = None
    # The cyclic garbage collector's youngest-generation threshold once started (None: Python's 700). A request
    # allocates hundreds of objects, nearly all freed by reference counting; at 700 the collector runs every
    # request or two and walks every young object each time. Walrus raises it (issue 18).
    gc_young_threshold: ClassVar[int | None] = None

    # How a malformed request or a full service is answered: JSON here, the API's own format where there is one.
    @staticmethod
    def render_http_error(status: int, code: str, message: str) -> tuple[bytes, str]:
        return json_error(status, code, message)

    answer_grace: ClassVar[float | None] = Limits.answer_grace

    def __init__(self, config: ServiceConfig):
        self.config = config
        pki_dir = pki.PkiDir(config.KOALA_PKI_DIR)
        self.identity = Identity.from_files(
            pki_dir.cert_path(config.KOALA_SERVICE_ID), pki_dir.key_path(config.KOALA_SERVICE_ID)
        )
        if self.identity.role != self.role or self.identity.id != config.KOALA_SERVICE_ID:
            raise ConfigError(
                f"certificate for {config.KOALA_SERVICE_ID} names {self.identity.id!r} with role "
                f"{self.identity.role!r}, expected role {self.role!r}"
            )
        self.trust = TrustStore(pki.load_cert(pki_dir.ca_path))
        self.rpc = RpcServer(self.identity, self.trust)
        self.client = RpcClient(self.identity, self.trust)
        self.monitor = PeerMonitor(self.client, config.KOALA_PEER_POLL_SECONDS)
        self.started_at = time.time()
        limits = Limits(
            max_connections=config.KOALA_HTTP_MAX_CONNECTIONS,
            max_per_peer=config.KOALA_HTTP_MAX_CONNECTIONS_PER_PEER,
            idle_seconds=config.KOALA_HTTP_IDLE_SECONDS,
            header_seconds=config.KOALA_HTTP_HEADER_SECONDS,
            body_idle_seconds=config.KOALA_HTTP_BODY_IDLE_SECONDS,
            answer_grace=self.answer_grace,
        )
        self.guard = ConnectionGuard(limits, self.render_http_error)
        self.app = web.Application(client_max_size=self.client_max_size, middlewares=[self.guard.middleware])
        self.app.router.add_get("/healthz", self._healthz)
        self.rpc.add("DescribeService", self._describe_service, COMPONENT_AND_ADMIN_ROLES)
        self.rpc.install(self.app)

    # Hooks for subclasses.
    def listen_hosts(self) -> list[str]:
        """The addresses to listen on (all on the service's port)."""
        return [self.config.KOALA_BIND]

    def listen_sockets(self) -> list[socket.socket]:
        """Listening sockets made for this service by whoever started it (the same application serves them)."""
        return []

    def peer_list(self) -> list[tuple[str, str]]:
        """(url, role) of the services this one calls, monitored from start."""
        return []

    async def on_start(self) -> None:
        """Open databases, start control loops. Runs before the port is opened."""

    async def on_stop(self) -> None:
        """Stop loops, close databases. Runs after in-flight requests finished."""

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _describe_service(self, _: object, caller: Caller) -> DescribeServiceResponse:
        return DescribeServiceResponse(
            id=self.identity.id,
            role=self.role,
            version=VERSION,
            uptime=time.time() - self.started_at,
            peers=self.monitor.statuses(),
        )

    def request_handler(self, app_handler: RequestHandlerFn) -> RequestHandlerFn:
        """What serves each request: the application (router, then middlewares) unless a subclass puts a faster
        front before it for most of its requests (Walrus: S3 requests skip the router)."""
        return app_handler

    def runner_options(self) -> dict[str, object]:
        """aiohttp's request handler settings (Walrus raises the header limits)."""
        return {"access_log": None, "shutdown_timeout": 30, "keepalive_timeout": self.guard.limits.idle_seconds}

    async def start(self) -> web.AppRunner:
        await self.on_start()
        runner = await self.listen()
        self.monitor.set_peers(self.peer_list())
        return runner

    async def listen(self) -> web.AppRunner:
        """Open the port (`start` does it after `on_start`; a standby opens it before, to answer 503)."""
        self.guard.limits = self.guard.limits.fit_descriptor_limit()
        install_exhaustion_handler(asyncio.get_running_loop())
        runner = web.AppRunner(self.app, **self.runner_options())  # type: ignore[arg-type]
        await runner.setup()
        assert runner.server is not None  # set up just now
        runner.server.request_handler = self.request_handler(runner.server.request_handler)
        site = HttpSite(runner, self.listen_hosts(), self.config.port, self.guard)
        await site.start()
        for sock in self.listen_sockets():
            extra = HttpSite(runner, [], 0, self.guard, sock=sock)
            await extra.start()
            log.info("%s %s also listening on %s", self.role, self.identity.id, extra.name)
        log.info(
            "%s %s listening on %s port %s",
            self.role,
            self.identity.id,
            " ".join(self.listen_hosts()),
            self.config.port,
        )
        return runner

    async def stop(self, runner: web.AppRunner) -> None:
        await self.monitor.stop()
        await runner.cleanup()  # stops accepting, lets in-flight requests finish
        await self.on_stop()
        await self.client.close()


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (call it inside the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def run_until_stopped(name: str, main: Callable[[], object], refused: Sequence[tuple[ExceptionTypes, str]]) -> int:
    """Run `main` (a service's event loop, until it is stopped) and give the CLI's exit status: 2 with
    `koala NAME: WHY: error` for an error of a type in `refused` (types, why), 1 for an OSError (a port in use, a
    missing file), 0 after a stop."""
    try:
        main()
    except KeyboardInterrupt:
        pass
    except Exception as err:
        why = next((why for types, why in refused if isinstance(err, types)), None)
        if why is None and not isinstance(err, OSError):
            raise
        print(f"koala {name}: {why or 'cannot start'}: {err}", file=sys.stderr)
        return 2 if why is not None else 1
    with contextlib.suppress(Exception):
        logging.shutdown()
    return 0


async def serve_forever(service: Service) -> None:
    stall = service.config.KOALA_LOOP_STALL_MS
    monitor = LoopMonitor(stall / 1000) if stall else None
    if monitor is not None:
        monitor.start()
    runner = await service.start()
    # What start-up built lives as long as the process: kept out of the collector's full passes from now on (its
    # garbage collected first, so that none is kept for good).
    gc.collect()
    gc.freeze()
    if service.gc_young_threshold is not None:
        gc.set_threshold(service.gc_young_threshold, *gc.get_threshold()[1:])
    stop = stop_on_signals()
    await stop.wait()
    log.info("stopping: finishing in-flight requests")
    await service.stop(runner)
    if monitor is not None:
        await monitor.stop()
    log.info("stopped")


def run(service_class: type[Service], config_path: str) -> int:
    """Run one service in the foreground until SIGTERM; the exit status for the CLI."""
    try:
        config = service_class.config_class.load(config_path)
    except ConfigError as err:
        print(f"koala {service_class.role}: bad configuration: {err}", file=sys.stderr)
        return 2
    setup_logging(config.KOALA_SERVICE_ID, config.KOALA_LOG_LEVEL)
    try:
        service = service_class(config)
    except (ConfigError, pki.PkiError) as err:
        print(f"koala {service_class.role}: cannot start: {err}", file=sys.stderr)
        return 2

    def main() -> None:
        with asyncio.Runner(loop_factory=service_class.loop_factory) as runner:
            runner.run(serve_forever(service))

    # A ConfigError found at start-up, e.g. a remote that refuses the configured credentials.
    return run_until_stopped(service_class.role, main, [(ConfigError, "bad configuration")])
