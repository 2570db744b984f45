"""Helpers for the NC tests: signed peers the NC talks to, run in a thread of the test process.

- `ImageServer` serves `GetDecryptedImage` with Walrus's certificate and Walrus's signed, streamed interface
  (common/messages/walrus_images.py: signed JSON request, signed descriptor of the bytes, ranges), for the NC
  tests that do not need the whole cloud (bundles, S3, identity). Images are keyed by "bucket/manifest key".
  It can be slowed down or stopped, so staging timeouts and an unreachable Walrus are real.
- `NotifyRecorder` accepts the NC's `NotifyInstances` pushes with the CC's certificate and records them.
- `node_file` writes a libvirt test-driver node description (test:///path.xml): its capacity and the domains
  the fake hypervisor is running when a connection opens. Each connection to test:/// starts from that file,
  so a test simulates "the hypervisor kept running while the NC restarted" by writing the domains the NC had
  created (their saved libvirt.xml) into the file the restarted NC connects to.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from common import pki, signing
from common.messages.cc_nc import Ack, NotifyInstancesRequest
from common.messages.walrus_images import (
    GET_DECRYPTED_IMAGE_PATH,
    HEADER_IMAGE_RANGE,
    HEADER_IMAGE_SHA256,
    GetDecryptedImageRequest,
    image_descriptor,
)
from common.rpc import RpcServer
from common.signing import AuthError, Identity, ReplayCache, TrustStore
from tests.harness import free_port


class ThreadServer:
    """An aiohttp app on its own event loop in a daemon thread."""

    def __init__(self, app: web.Application, port: int | None = None):
        self.app, self.port = app, port or free_port()
        self.loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.running = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _submit(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def start(self) -> None:
        async def start() -> None:
            self._runner = web.AppRunner(self.app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

        self._submit(start())
        self.running = True

    def stop(self) -> None:
        if self._runner is not None:
            self._submit(self._runner.cleanup())
            self._runner = None
        self.running = False

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)


@dataclass
class Image:
    path: Path
    sha256: str


@dataclass
class ImageServer:
    pki_dir: Path
    port: int | None = None
    images: dict[str, Image] = field(default_factory=dict)  # "bucket/key" -> image
    requests: list[tuple[str, int]] = field(default_factory=list)  # (manifest, bytes sent)
    arrived: list[str] = field(default_factory=list)  # manifests asked for, as each request arrives (before delay)
    delay: float = 0.0

    def __post_init__(self) -> None:
        pkidir = pki.PkiDir(self.pki_dir)
        self.identity = Identity.from_files(pkidir.cert_path("walrus"), pkidir.key_path("walrus"))
        self.trust = TrustStore(pki.load_cert(pkidir.ca_path))
        self.replay = ReplayCache()
        app = web.Application()
        app.router.add_get("/internal/identity", self._identity)
        app.router.add_post(GET_DECRYPTED_IMAGE_PATH, self._get)
        self.server = ThreadServer(app, self.port)

    @property
    def url(self) -> str:
        return self.server.url

    def add(self, manifest: str, path: Path) -> None:
        self.images[manifest] = Image(path, hashlib.sha256(path.read_bytes()).hexdigest())

    def downloads(self, manifest: str) -> int:
        return sum(1 for m, sent in self.requests if m == manifest and sent > 0)

    async def _identity(self, request: web.Request) -> web.Response:
        return web.json_response({"id": "walrus", "role": "walrus", "cert": self.identity.cert_der_b64})

    def _signed(self, request: web.Request, status: int, body: bytes, covered: bytes, headers: dict) -> web.Response:
        nonce = request.headers.get(signing.HEADER_NONCE, "")
        caller = request.headers.get(signing.HEADER_CERT, "")
        signed = self.identity.sign_headers(signing.RESPONSE_METHOD, request.path, caller, covered, nonce)
        return web.Response(status=status, body=body, headers={**signed, **headers})

    def _error(self, request: web.Request, status: int, code: str) -> web.Response:
        body = f'{{"code":"{code}","message":"{code}"}}'.encode()
        return self._signed(request, status, body, body, {"Content-Type": "application/json"})

    async def _get(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            peer = signing.verify_request(
                self.trust, self.replay, "walrus", "POST", request.path, request.headers, body
            )
        except AuthError as err:
            return self._error(request, err.status, err.code)
        if peer.role != "nc":
            return self._error(request, 403, "RoleNotAllowed")
        message = GetDecryptedImageRequest.model_validate_json(body)
        manifest = f"{message.bucket}/{message.manifest_key}"
        image = self.images.get(manifest)
        if image is None:
            return self._error(request, 404, "NoSuchKey")
        self.arrived.append(manifest)
        began = time.monotonic()
        while self.delay and time.monotonic() - began < self.delay:  # noqa: ASYNC110 - delay 0 releases waiters
            await asyncio.sleep(0.05)
        data = image.path.read_bytes()
        total = len(data)
        start = message.start or 0
        end = total if message.end is None else min(message.end, total)
        status = 206 if (start, end) != (0, total) else 200
        self.requests.append((manifest, end - start))
        headers = {HEADER_IMAGE_RANGE: f"{start}-{end}/{total}", HEADER_IMAGE_SHA256: image.sha256}
        descriptor = image_descriptor(status, start, end, total, image.sha256)
        return self._signed(request, status, data[start:end], descriptor, headers)

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def close(self) -> None:
        self.server.close()


class NotifyRecorder:
    """Records NotifyInstances pushes, answering with the CC's certificate."""

    def __init__(self, pki_dir: Path, cc_id: str, port: int):
        pkidir = pki.PkiDir(pki_dir)
        identity = Identity.from_files(pkidir.cert_path(cc_id), pkidir.key_path(cc_id))
        self.rpc = RpcServer(identity, TrustStore(pki.load_cert(pkidir.ca_path)))
        self.pushes: list[NotifyInstancesRequest] = []
        self.arrivals: list[tuple[float, str, str]] = []  # (monotonic time, instance id, state)
        self.rpc.add("NotifyInstances", self._notify, {"nc"}, NotifyInstancesRequest)
        app = web.Application()
        self.rpc.install(app)
        self.server = ThreadServer(app, port)
        self.server.start()

    async def _notify(self, message: NotifyInstancesRequest, caller) -> Ack:
        self.pushes.append(message)
        now = time.monotonic()
        self.arrivals.extend((now, i.instance_id, i.state) for i in message.instances)
        return Ack()

    def states(self, instance_id: str) -> list[str]:
        return [f"{i.state}/{i.detail}" for p in self.pushes for i in p.instances if i.instance_id == instance_id]

    def close(self) -> None:
        self.server.close()


def node_file(path: Path, domains_xml: list[str] = (), cpus: int = 256, memory_gib: int = 256) -> str:
    """A test-driver node description; returns its test:/// URI."""
    domains = "\n".join(domains_xml)
    path.write_text(
        f"""<node>
  <cpu><mhz>2000</mhz><model>i686</model><nodes>1</nodes><sockets>1</sockets><cores>{cpus}</cores>
       <threads>1</threads><active>{cpus}</active></cpu>
  <memory>{memory_gib * 1024 * 1024}</memory>
{domains}
</node>
"""
    )
    return f"test://{path}"
