"""Signed internal RPC: `POST /internal/<Operation>` with a pydantic JSON body (DESIGN section 3).

Server: `RpcServer.operation(...)` registers a handler with the roles allowed to call it; every request is
verified (certificate chain, role, recipient, date, nonce, signature) before the handler runs, and every
response is signed. Client: `RpcClient.call(...)` signs, sends, verifies the signed response, and retries with
backoff only operations marked idempotent. Errors are JSON `{"code", "message"}`.

A caller learns a peer's id and certificate from `GET /internal/identity` (certificates are public), checks
them against the CA, and then signs for that recipient. It sends its own certificate with its first request to
a peer, and again whenever the peer answers UnknownCertificate (e.g. after a restart).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ValidationError

from common import signing
from common.backoff import Backoff
from common.bodies import BodyTooLarge, read_bounded
from common.signing import AuthError, Identity, PeerCert, ReplayCache, TrustStore

log = logging.getLogger("koala.rpc")

MAX_INTERNAL_BODY = 1 << 20  # 1 MiB
IDENTITY_PATH = "/internal/identity"
KEEPALIVE_SECONDS = 25.0
T = TypeVar("T", bound=BaseModel)


class RpcError(Exception):
    """An error answered by a peer or raised by a handler: HTTP status, reason code, message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message


class PeerUnreachable(RpcError):
    def __init__(self, url: str, reason: str):
        super().__init__(503, "PeerUnreachable", f"{url}: {reason}")


class PeerNotReached(PeerUnreachable):
    """The peer could not even be connected to: the request never left, so nothing happened there."""


class PeerStandingBy(RpcError):
    """The peer answered 503 with Retry-After: a standby (a CLC while another CLC is active, standby.py), healthy by
    design; the request goes to the active one, or here again later."""

    def __init__(self, url: str, retry_after: str):
        super().__init__(503, "ServiceUnavailable", f"{url} is standing by (503, retry after {retry_after} s)")
        self.retry_after = retry_after


class Empty(BaseModel):
    pass


@dataclass(frozen=True)
class Caller:
    """Who made a verified request."""

    id: str
    role: str
    cert: PeerCert


Handler = Callable[[Any, Caller], Awaitable[BaseModel]]


@dataclass
class Operation:
    name: str
    handler: Handler
    request: type[BaseModel]
    roles: frozenset[str]


def error_body(code: str, message: str) -> bytes:
    return RpcErrorBody(code=code, message=message).model_dump_json().encode()


class RpcErrorBody(BaseModel):
    code: str
    message: str


class RpcServer:
    """Registers operations and serves them, signed, under /internal/."""

    def __init__(self, identity: Identity, trust: TrustStore, max_body: int = MAX_INTERNAL_BODY):
        self.identity, self.trust, self.max_body = identity, trust, max_body
        self.replay = ReplayCache()
        self.operations: dict[str, Operation] = {}

    def operation(
        self, name: str, roles: Iterable[str], request: type[BaseModel] = Empty
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.add(name, handler, roles, request)
            return handler

        return register

    def add(self, name: str, handler: Handler, roles: Iterable[str], request: type[BaseModel] = Empty) -> None:
        if name in self.operations:
            raise ValueError(f"operation {name} registered twice")
        self.operations[name] = Operation(name, handler, request, frozenset(roles))

    def install(self, app: web.Application) -> None:
        app.router.add_get(IDENTITY_PATH, self._identity)
        app.router.add_post("/internal/{operation}", self._dispatch)

    async def _identity(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"id": self.identity.id, "role": self.identity.role, "cert": self.identity.cert_der_b64}
        )

    async def _dispatch(self, request: web.Request) -> web.Response:
        name = request.match_info["operation"]
        nonce = request.headers.get(signing.HEADER_NONCE, "")
        # Responses are addressed to the certificate the caller claims, so even a refusal is signed for it.
        caller_fp = request.headers.get(signing.HEADER_CERT, "")[:64]
        try:
            body = await self._read_body(request)
            try:
                peer = signing.verify_request(
                    self.trust, self.replay, self.identity.id, request.method, request.path, request.headers, body
                )
            except AuthError as err:
                log.warning("refused %s from %s: %s (%s)", name, request.remote, err.code, err.message)
                raise
            operation = self.operations.get(name)
            if operation is None:
                raise RpcError(404, "UnknownOperation", f"no operation {name}")
            if peer.role not in operation.roles:
                log.warning("refused %s from %s: role %s not allowed", name, peer.id, peer.role)
                raise AuthError(403, "RoleNotAllowed", f"role {peer.role!r} may not call {name}")
            try:
                message = operation.request.model_validate_json(body or b"{}")
            except ValidationError as err:
                raise RpcError(400, "InvalidRequest", _validation_summary(err)) from None
            result = await operation.handler(message, Caller(peer.id, peer.role, peer))
            status, payload = 200, result.model_dump_json().encode()
        except (AuthError, RpcError) as err:
            status, payload = err.status, error_body(err.code, err.message)
        except ConnectionError:
            raise  # the client went away mid-request: nobody to answer; the listener logs it in one line
        except Exception:
            log.exception("internal error in %s", name)
            status, payload = 500, error_body("InternalError", "the operation failed; see the service log")
        headers = {"Content-Type": "application/json"}
        if len(nonce) == 32:
            headers.update(self.identity.sign_headers(signing.RESPONSE_METHOD, request.path, caller_fp, payload, nonce))
        return web.Response(status=status, body=payload, headers=headers)

    async def _read_body(self, request: web.Request) -> bytes:
        try:
            return await read_bounded(request, self.max_body)
        except BodyTooLarge:
            raise RpcError(413, "BodyTooLarge", f"internal calls are limited to {self.max_body} bytes") from None


def _validation_summary(err: ValidationError) -> str:
    parts = []
    for error in err.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


@dataclass
class _Peer:
    cert: PeerCert
    knows_our_cert: bool = False


@dataclass
class RpcClient:
    """Calls other services' internal operations, signed; one connection pool for all peers."""

    identity: Identity
    trust: TrustStore
    timeout: float = 10.0
    retries: int = 3
    _session: aiohttp.ClientSession | None = None
    _peers: dict[str, _Peer] = field(default_factory=dict)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                # Pooled connections kept 25 s, under the services' 30 s idle limit (KOALA_HTTP_IDLE_SECONDS): with
                # aiohttp's 15 s, most calls between a CC and its nodes opened a new connection (both sides' work).
                connector=aiohttp.TCPConnector(limit=256, limit_per_host=64, keepalive_timeout=KEEPALIVE_SECONDS),
                json_serialize=None,  # type: ignore[arg-type]
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def peer(self, url: str, expect_role: str | None = None, timeout: float | None = None) -> PeerCert:
        """The peer's verified certificate, fetched once from its identity endpoint."""
        known = self._peers.get(url)
        if known is None:
            try:
                async with self.session.get(
                    url.rstrip("/") + IDENTITY_PATH, timeout=aiohttp.ClientTimeout(total=timeout or self.timeout)
                ) as response:
                    if response.status == 503 and "Retry-After" in response.headers:
                        raise PeerStandingBy(url, response.headers["Retry-After"])
                    if response.status != 200:
                        raise RpcError(502, "BadIdentity", f"{url} answered {response.status} for its identity")
                    data = await response.json()
            except (aiohttp.ClientError, TimeoutError, OSError) as err:
                raise PeerNotReached(url, str(err) or type(err).__name__) from None  # only its identity was asked
            try:
                cert = self.trust.add_der_b64(str(data.get("cert", "")))
            except AuthError as err:
                raise RpcError(502, err.code, f"{url}: {err.message}") from None
            known = self._peers[url] = _Peer(cert)
        if expect_role and known.cert.role != expect_role:
            raise RpcError(502, "UnexpectedPeerRole", f"{url} is a {known.cert.role}, not a {expect_role}")
        return known.cert

    async def call(
        self,
        url: str,
        operation: str,
        message: BaseModel | None,
        response_type: type[T],
        *,
        timeout: float | None = None,
        idempotent: bool = False,
        expect_role: str | None = None,
    ) -> T:
        """Call `operation` on the service at `url`; raise RpcError or PeerUnreachable on failure."""
        body = (message or Empty()).model_dump_json().encode()
        attempts = self.retries if idempotent else 1
        backoff = Backoff(0.1, 2.0, jitter=True)
        for attempt in range(1, attempts + 1):
            try:
                return await self._call_once(url, operation, body, response_type, timeout, expect_role)
            except PeerUnreachable:
                self._peers.pop(url, None)  # it may come back as another process with a new cert
                if attempt == attempts:
                    raise
            except RpcError as err:
                if err.status not in (502, 503) or attempt == attempts:
                    raise
            await backoff.wait()
        raise AssertionError("unreachable")

    async def _call_once(
        self,
        url: str,
        operation: str,
        body: bytes,
        response_type: type[T],
        timeout: float | None,
        expect_role: str | None,
    ) -> T:
        deadline = time.monotonic() + (timeout or self.timeout)
        peer_cert = await self.peer(url, expect_role, timeout)
        path = f"/internal/{operation}"
        stale_connection_retry = True
        sign_at: float | None = None
        for _ in range(4):  # again only to send our certificate, once after a stale pooled connection, or re-signed
            state = self._peers[url]
            headers = self.identity.sign_headers("POST", path, peer_cert.id, body, at=sign_at)
            headers["Content-Type"] = "application/json"
            if not state.knows_our_cert:
                headers[signing.HEADER_CERT_PEM] = self.identity.cert_der_b64
            remaining = max(deadline - time.monotonic(), 0.05)
            try:
                async with self.session.post(
                    url.rstrip("/") + path, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=remaining)
                ) as response:
                    payload = await response.read()
                    status, response_headers = response.status, response.headers
            except aiohttp.ClientConnectorError as err:
                raise PeerNotReached(url, str(err) or type(err).__name__) from None
            except aiohttp.ServerDisconnectedError as err:
                # A keep-alive connection the peer closed (e.g. it restarted): the request was not processed.
                if stale_connection_retry:
                    stale_connection_retry = False
                    continue
                raise PeerUnreachable(url, str(err) or type(err).__name__) from None
            except (aiohttp.ClientError, TimeoutError, OSError) as err:
                raise PeerUnreachable(url, str(err) or type(err).__name__) from None
            try:
                signing.verify_response(
                    peer_cert, self.identity.fingerprint, path, headers[signing.HEADER_NONCE], response_headers, payload
                )
            except AuthError as err:
                self._peers.pop(url, None)  # perhaps a new process with a new certificate: ask again next time
                raise RpcError(502, err.code, f"{url}: {err.message}") from None
            if status == 200:
                state.knows_our_cert = True
                try:
                    return response_type.model_validate_json(payload)
                except ValidationError as err:
                    raise RpcError(502, "BadResponse", _validation_summary(err)) from None
            try:
                error = RpcErrorBody.model_validate_json(payload)
            except ValidationError:
                error = RpcErrorBody(code="BadResponse", message=f"HTTP {status} without a JSON error")
            if error.code == "UnknownCertificate" and state.knows_our_cert:
                state.knows_our_cert = False
                continue
            if error.code == signing.PREDATES_START and sign_at is None:
                # Our clock is behind the peer's, which just restarted: sign at its (signed) date instead.
                sign_at = max(time.time(), signing.parse_date(response_headers[signing.HEADER_DATE]))
                continue
            raise RpcError(status, error.code, error.message)
        raise RpcError(401, "UnknownCertificate", f"{url} does not accept our certificate")
