"""Two real Koala clouds for the bursting tests and bench: a "remote" cloud that plays the public EC2 cloud, and a
local cloud with one zone of local nodes (zone1, on libvirt's test driver, room for one m1.small) and a remote
zone (`burst`): a CC process configured with the remote's endpoint, credentials and maps, registered with the
local CLC. Between the remote zone's CC and the remote cloud sits FaultProxy, a small real HTTP server that
forwards EC2 requests as they are, or holds or fails them on demand (the remote's faults)."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import aiohttp
import boto3
from aiohttp import web
from botocore.config import Config

from common.config import render_conf
from common.messages.clusters import ClusterInfo, RegisterClusterRequest
from services.cluster_controller.remote import credentials
from tests.clc.compute_cloud import bundle_and_upload
from tests.clc.ec2_helpers import REGION, Creds, admin_call, admin_creds, client
from tests.harness import Cloud, ServiceProcess, free_port
from tests.waiting import wait_for

BURST_ZONE = "burst"
REMOTE_PUBLIC_IPS = "198.51.100.10-198.51.100.60"


Match = Callable[[str, str, bytes], bool]  # (method, path, body) -> whether a rule applies to the request


class FaultProxy:
    """Forwards every request to `target` (the remote's EC2 or S3 URL, whose path `path` is; the Host header is
    kept, so SigV4 signatures stay valid), unless told:
    - hold_run: RunInstances is forwarded, then its answer held until release() (the remote acted, the caller
      never hears of it);
    - hang: nothing is forwarded, every request waits until release(), then gets a 503;
    - fail: every request gets a 500;
    - hold(match, forward): requests that match are held until release(), forwarded first or not at all;
    - deny(match): requests that match get S3's 403 AccessDenied."""

    def __init__(self, target: str, path: str = "/services/Eucalyptus"):
        self.target = target.rstrip("/")
        self.path = path
        self.mode = "pass"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{path}"
        self.requests = 0
        self.waiting = 0  # requests held right now
        self.forwarded: list[bytes] = []  # the bodies of the requests that reached the remote
        self.seen: list[tuple[str, str]] = []  # (method, path) of the requests that reached the remote
        self._hold: tuple[Match, bool] | None = None
        self._deny: Match | None = None
        self._loop = asyncio.new_event_loop()
        self._release: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        self._release = asyncio.Event()
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.read()
        mode = self.mode
        if mode == "fail":
            return web.Response(status=500, text="<html>internal error</html>")
        if mode == "hang":
            return await self._held(web.Response(status=503, text="released"))
        if self._deny is not None and self._deny(request.method, request.path, body):
            denied = "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
            return web.Response(status=403, text=denied, content_type="application/xml")
        hold = self._hold is not None and self._hold[0](request.method, request.path, body)
        if hold and self._hold is not None and not self._hold[1]:
            return await self._held(web.Response(status=503, text="released"))
        target = self.target + request.path_qs.replace(self.path, "", 1)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("content-length", "transfer-encoding")}
        self.forwarded.append(body)
        self.seen.append((request.method, request.path))
        async with self._session.request(request.method, target, headers=headers, data=body) as answer:
            payload = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() in ("etag", "content-type")}
            reply = web.Response(status=answer.status, body=payload, headers=kept)
        if hold or (mode == "hold_run" and b"Action=RunInstances" in body):
            return await self._held(reply)
        return reply

    async def _held(self, reply: web.Response) -> web.Response:
        assert self._release is not None
        self.waiting += 1
        try:
            await self._release.wait()
        finally:
            self.waiting -= 1
        return reply

    def set(self, mode: str) -> None:
        def apply() -> None:
            assert self._release is not None
            self.mode = mode
            self._release.clear()

        self._apply(apply)

    def hold(self, match: Match, forward: bool) -> None:
        def apply() -> None:
            assert self._release is not None
            self._hold = (match, forward)
            self._release.clear()

        self._apply(apply)

    def deny(self, match: Match) -> None:
        def apply() -> None:
            self._deny = match

        self._apply(apply)

    def release(self) -> None:
        """Let held requests answer, and forward everything from now on."""

        def apply() -> None:
            assert self._release is not None
            self.mode = "pass"
            self._hold = self._deny = None
            self._release.set()

        self._apply(apply)

    def _apply(self, change: Callable[[], None]) -> None:
        """Make `change` in the proxy's loop and return once it is made (requests see it from then on)."""

        async def apply() -> None:
            change()

        asyncio.run_coroutine_threadsafe(apply(), self._loop).result(10)

    def close(self) -> None:
        async def stop() -> None:
            assert self._release is not None
            self._release.set()
            await self._session.close()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class RemoteZoneCC(ServiceProcess):
    """A CC process in remote mode for zone `zone` of `cloud` (its own certificate, port, config, state, log)."""

    role = "cc"

    def __init__(self, cloud: Cloud, zone: str, settings: dict[str, object], secret: Creds | None = None):
        self.cloud, self.zone, self.id = cloud, zone, f"cc-{zone}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cloud.aio.pki.ensure(self.id, "cc")
        self.data_dir = cloud.dir / "data" / self.id
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.credentials_path = self.data_dir / "remote-credentials"
        if secret is not None:
            credentials.write(self.credentials_path, secret.access_key, secret.secret_key)
        values = {
            "KOALA_SERVICE_ID": self.id,
            "KOALA_STATE_DIR": self.data_dir,
            "KOALA_PKI_DIR": cloud.aio.pki.path,
            "KOALA_BIND": "127.0.0.1",
            "KOALA_PEER_POLL_SECONDS": 1,
            "CC_PORT": self.port,
            "KOALA_ZONE": zone,
            "KOALA_CLC_URL": cloud.url("clc"),
            "KOALA_REMOTE_REGION": "eucalyptus",
            "KOALA_REMOTE_CREDENTIALS": self.credentials_path,
            **settings,
        }
        self.conf_path = cloud.dir / "conf" / f"{self.id}.conf"
        self.conf_path.write_text(render_conf(values, f"Koala remote zone {zone}, written by the bursting tests."))
        self.log_path = cloud.dir / "logs" / f"{self.id}.log"
        self.process: subprocess.Popen | None = None

    def register(self) -> ClusterInfo:
        return admin_call(
            self.cloud, "RegisterCluster", RegisterClusterRequest(zone=self.zone, url=self.url, force=True), ClusterInfo
        )


def register_image(cloud: Cloud, work: Path, bucket: str) -> str:
    creds = admin_creds(cloud)
    location = bundle_and_upload(cloud, work, "machine", bucket)
    return client(cloud, creds).register_image(ImageLocation=location, Name=bucket)["ImageId"]


class World:
    """The remote cloud, the local cloud and its remote zone, up and ready."""

    def __init__(
        self, base: Path, burst_vmtypes: str = "m1.small", cc_settings: dict | None = None, proxy: bool = True
    ):
        self.remote = Cloud(base / "remote", extra={"clc": {"KOALA_PUBLIC_IPS": REMOTE_PUBLIC_IPS}})
        self.local = Cloud(
            base / "local",
            extra={
                "clc": {"KOALA_BURST_VMTYPES": burst_vmtypes, "KOALA_CC_POLL_SECONDS": 1},
                "nc": {"MAX_CORES": 1, "CPU_ALLOCATION_RATIO": 1},  # zone1 has room for one m1.small: the next bursts
            },
        )
        self.remote.start()
        self.local.start()
        self.remote_creds = admin_creds(self.remote)
        self.local_creds = admin_creds(self.local)
        self.remote_image = register_image(self.remote, base / "bundle-remote", "remote-img")
        self.local_image = register_image(self.local, base / "bundle-local", "local-img")
        self.proxy = FaultProxy(self.remote.admin_credentials()["EC2_URL"])
        settings = {
            # Through the fault proxy, or straight to the remote (benchmarks).
            "KOALA_REMOTE_ENDPOINT": self.proxy.url if proxy else self.remote.admin_credentials()["EC2_URL"],
            "KOALA_REMOTE_IMAGE_MAP": f"{self.local_image}={self.remote_image}",
            "KOALA_REMOTE_VMTYPE_MAP": "m1.small m1.large",
            "KOALA_REMOTE_MAX_INSTANCES": 10,
            "KOALA_REMOTE_TIMEOUT": 20,
            "KOALA_REMOTE_POLL_MAX": 2,
            "KOALA_REMOTE_KEEP_UNUSED": 0,  # the tests see remote key pairs and groups go as their instance ends
            **(cc_settings or {}),
        }
        self.cc = RemoteZoneCC(self.local, BURST_ZONE, settings, self.remote_creds)
        self.cc.start()
        self.cc.register()

    def stop(self) -> None:
        self.cc.stop()
        self.proxy.close()
        self.local.stop()
        self.remote.stop()

    def local_ec2(self):
        """boto3 on the local cloud, making each call once: a failed launch is not tried again behind our back."""
        return boto3.client(
            "ec2",
            endpoint_url=self.local.admin_credentials()["EC2_URL"],
            region_name=REGION,
            aws_access_key_id=self.local_creds.access_key,
            aws_secret_access_key=self.local_creds.secret_key,
            config=Config(retries={"total_max_attempts": 1}),
        )

    def remote_ec2(self):
        return client(self.remote, self.remote_creds)

    def remote_ec2_once(self):
        """boto3 on the remote cloud, making each call once (as local_ec2)."""
        return boto3.client(
            "ec2",
            endpoint_url=self.remote.admin_credentials()["EC2_URL"],
            region_name=REGION,
            aws_access_key_id=self.remote_creds.access_key,
            aws_secret_access_key=self.remote_creds.secret_key,
            config=Config(retries={"total_max_attempts": 1}),
        )

    def remote_instances(self, live_only: bool = True) -> list[dict]:
        """The remote cloud's instances that carry a local cloud's tag."""
        found = []
        for reservation in self.remote_ec2().describe_instances()["Reservations"]:
            for instance in reservation["Instances"]:
                tags = {t["Key"]: t["Value"] for t in instance.get("Tags") or []}
                if "koala-instance" not in tags:
                    continue
                if live_only and instance["State"]["Name"] in ("terminated", "shutting-down"):
                    continue
                found.append({**instance, "LocalTags": tags})
        return found

    def offers(self, zone: str, vm_type: str = "m1.small") -> bool:
        """Whether the local CLC offers `vm_type` in `zone` (Eucalyptus's verbose zone table)."""
        zones = self.local_ec2().describe_availability_zones(ZoneNames=["verbose"])["AvailabilityZones"]
        names = [z["ZoneName"] for z in zones]
        if zone not in names:
            return False
        small = [z for z in zones[names.index(zone) + 1 :] if z["ZoneName"] == f"|- {vm_type}"][:1]
        return bool(small) and not small[0]["State"].startswith("0000")

    def wait_zone(self, zone: str, timeout: float = 30.0, vm_type: str = "m1.small") -> None:
        wait_for(lambda: self.offers(zone, vm_type), timeout, what=f"zone {zone} offering {vm_type}")
