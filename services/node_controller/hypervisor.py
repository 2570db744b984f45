"""libvirt behind asyncio: one worker thread makes every libvirt call (libvirt calls block, and the reference
NC serialised them), a second thread runs libvirt's default event loop, and lifecycle events are handed to
the asyncio loop. A lost connection (close callback, or a call failing with the connection dead) is reopened
with backoff, and `on_reconnect` lets the instance manager reconcile what it missed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import libvirt

from common.backoff import Backoff
from services.node_controller.domain import koala_tag

log = logging.getLogger("koala.nc.libvirt")
T = TypeVar("T")

_event_impl_lock = threading.Lock()
_event_impl_started = False

GONE_TIMEOUT = 30.0  # seconds a destroyed domain may take to go (libvirt itself waits up to 15 s for QEMU to die)
GONE_POLL = 0.05

STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "paused",
}
EVENT_NAMES = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}


class HypervisorError(Exception):
    """A libvirt call failed; `lost` tells the connection is gone (the call may be retried later)."""

    def __init__(self, message: str, lost: bool = False, code: int = 0):
        super().__init__(message)
        self.lost, self.code = lost, code


@dataclass(frozen=True)
class DomainInfo:
    name: str
    state: str  # running, blocked, paused, shutdown, shutoff, crashed, nostate
    xml: str
    tag: dict[str, str] | None = None  # koala_tag(xml), read once per run of the domain
    uuid: str = ""


EventHandler = Callable[[str, str, int], None]  # domain name, event name, detail


def _start_event_thread() -> None:
    """libvirt's default event loop in a daemon thread; once per process, before the first connection."""
    global _event_impl_started
    with _event_impl_lock:
        if _event_impl_started:
            return
        libvirt.virEventRegisterDefaultImpl()
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors are raised, not printed to stderr

        def run() -> None:
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except libvirt.libvirtError:  # pragma: no cover - keep the loop alive whatever a callback did
                    log.exception("libvirt event loop iteration failed")

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_impl_started = True


class Hypervisor:
    def __init__(self, uri: str, on_event: EventHandler, on_reconnect: Callable[[], Any] | None = None):
        self.uri = uri
        self.on_event, self.on_reconnect = on_event, on_reconnect
        # (domain name, domain UUID) -> whether its events are for us: a libvirtd shared by two NCs (tests) tells
        # both of each other's domains, and a domain's name alone does not say which run of an instance it is.
        self.event_filter: Callable[[str, str], bool] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="libvirt")
        # Calls that block for long (a migration: seconds to minutes) get threads of their own, so the one worker
        # thread keeps serving every other call meanwhile (libvirt connections are thread-safe).
        self._long = ThreadPoolExecutor(max_workers=4, thread_name_prefix="libvirt-long")
        self._conn: libvirt.virConnect | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reconnect_task: asyncio.Task[Any] | None = None
        self._closing = False
        self.connected = asyncio.Event()
        self.reconnects = 0
        # (name, id, uuid) of each running domain -> its XML and Koala tag; used in the libvirt thread only
        self._xml_cache: dict[tuple[str, int, str], tuple[str, dict[str, str] | None]] = {}

    # --- connection ---------------------------------------------------------------------------------------
    async def start(self, timeout: float = 30.0) -> bool:
        """Open the connection, retrying with backoff for up to `timeout` s (libvirtd may still be starting).
        False if it is still not open: the reconnect loop then keeps trying in the background."""
        self._loop = asyncio.get_running_loop()
        _start_event_thread()
        backoff, deadline = Backoff(0.2, 5.0), self._loop.time() + timeout
        while True:
            try:
                await self._run(self._open)
                return True
            except HypervisorError as err:
                if self._loop.time() > deadline:
                    self._lost()
                    return False
                log.warning("cannot connect to %s yet: %s", self.uri, err)
                await backoff.wait()

    def _open(self) -> None:
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as err:
            raise HypervisorError(f"cannot open {self.uri}: {err.get_error_message()}", lost=True) from None
        if not self.uri.startswith("test:"):
            with contextlib.suppress(libvirt.libvirtError):
                conn.setKeepAlive(5, 3)  # a dead libvirtd is noticed within ~15 s even when idle
        conn.registerCloseCallback(self._closed_cb, None)
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle_cb, None)
        # A guest's reset (its own reboot, or ours) keeps the domain running: only this event tells of it.
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, self._reboot_cb, None)
        self._conn = conn
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.connected.set)
        log.info("connected to %s", self.uri)

    async def close(self) -> None:
        self._closing = True
        if self._reconnect_task:
            self._reconnect_task.cancel()
        with contextlib.suppress(Exception):
            await self._run(self._close_conn)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._long.shutdown(wait=False, cancel_futures=True)

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.unregisterCloseCallback()
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    # Called in the libvirt event thread.
    def _closed_cb(self, conn: libvirt.virConnect, reason: int, opaque: object) -> None:
        log.warning("libvirt connection to %s closed (reason %s)", self.uri, reason)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._lost)

    def _lifecycle_cb(
        self, conn: libvirt.virConnect, dom: libvirt.virDomain, event: int, detail: int, _: object
    ) -> None:
        if self._loop is not None:
            name, uuid = dom.name(), dom.UUIDString()
            self._loop.call_soon_threadsafe(self._deliver, name, uuid, EVENT_NAMES.get(event, str(event)), detail)

    def _deliver(self, name: str, uuid: str, event: str, detail: int) -> None:
        if self.event_filter is None or self.event_filter(name, uuid):
            self.on_event(name, event, detail)

    def _reboot_cb(self, conn: libvirt.virConnect, dom: libvirt.virDomain, _: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.on_event, dom.name(), "rebooted", 0)

    def _lost(self) -> None:
        if self._closing or (self._reconnect_task and not self._reconnect_task.done()):
            return
        self.connected.clear()
        self._reconnect_task = asyncio.create_task(self._reconnect(), name="libvirt reconnect")

    async def _reconnect(self) -> None:
        await self._run(self._close_conn)
        backoff = Backoff(0.2, 10.0)
        while not self._closing:
            try:
                await self._run(self._open)
            except HypervisorError as err:
                log.warning("reconnect to %s failed: %s", self.uri, err)
                await backoff.wait()
                continue
            self.reconnects += 1
            if self.on_reconnect is not None:
                result = self.on_reconnect()
                if asyncio.iscoroutine(result):
                    await result
            return

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._loop is not None
        return await self._loop.run_in_executor(self._executor, fn, *args)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` in the libvirt thread; libvirt errors become HypervisorError."""
        return await self._run(self._guarded, fn, args)

    async def call_long(self, fn: Callable[..., T], *args: Any) -> T:
        """As `call`, in a thread of its own: for calls that block for long, such as a migration."""
        assert self._loop is not None
        return await self._loop.run_in_executor(self._long, self._guarded, fn, args)

    def _guarded(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn = self._conn
        if conn is None:
            raise HypervisorError(f"not connected to {self.uri}", lost=True)
        try:
            return fn(conn, *args)
        except libvirt.libvirtError as err:
            alive = True
            with contextlib.suppress(libvirt.libvirtError):
                alive = bool(conn.isAlive())
            if not alive and self._loop is not None:
                self._loop.call_soon_threadsafe(self._lost)
            raise HypervisorError(
                err.get_error_message() or str(err), lost=not alive, code=err.get_error_code() or 0
            ) from None

    # --- operations (each runs in the libvirt thread) -----------------------------------------------------
    async def create(self, xml: str) -> None:
        def create(conn: libvirt.virConnect) -> None:
            conn.createXML(xml, 0)  # the virDomain is freed here: freeing it in the asyncio thread waits for libvirt

        await self.call(create)

    async def destroy(self, name: str) -> bool:
        """Destroy the running domain `name` if it is ours (tagged with its own instance id); False when there
        was none. A domain of that name without our tag is never touched (HypervisorError)."""

        def destroy(conn: libvirt.virConnect) -> bool:
            try:
                dom = conn.lookupByName(name)
                tag = koala_tag(dom.XMLDesc(0))
                if tag is None or tag["id"] != name:
                    raise HypervisorError(f"domain {name} is not tagged as this NC's instance: left alone")
                dom.destroy()
            except libvirt.libvirtError as err:
                if err.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
                    return False
                raise
            return True

        destroyed = await self.call(destroy)
        await self._wait_gone(name)
        return destroyed

    async def _wait_gone(self, name: str, timeout: float = GONE_TIMEOUT) -> None:
        """Wait until libvirt runs no domain `name`: libvirt's destroy may return while QEMU still closes the
        guest's disks (seen: 2 s with an iSCSI root), and a transient domain stays listed until then, so a new run
        of the instance could not be created yet and its volumes would be open twice. The end of a run is reported
        only after this."""

        def running(conn: libvirt.virConnect) -> bool:
            try:
                dom = conn.lookupByName(name)
                return bool(dom.isActive()) or not dom.isPersistent()  # a transient domain goes when it stops
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return False
                raise

        loop = asyncio.get_running_loop()
        started = loop.time()
        while await self.call(running):
            waited = loop.time() - started
            if waited > timeout:
                raise HypervisorError(f"domain {name} still runs {waited:.0f} s after it was destroyed")
            await asyncio.sleep(GONE_POLL)
        waited = loop.time() - started
        if waited > 0.5:
            log.info("%s: gone %.1f s after libvirt's destroy returned", name, waited)

    async def save(self, name: str, path: str) -> None:
        """Suspend the running domain `name` to `path` (libvirt save: memory and device state; the domain stops)."""
        await self.call(lambda conn: conn.lookupByName(name).save(path))

    async def restore(self, path: str) -> None:
        """Resume a domain saved by `save` (it runs again from where it was, with the same name)."""
        await self.call(lambda conn: conn.restore(path))

    async def reboot(self, name: str, acpi: bool = True) -> None:
        """Ask the guest to reboot: with `acpi`, the ACPI power button (the guest reboots if it heeds it), else the
        hypervisor's default method (Xen's PV shutdown protocol)."""
        flags = libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN if acpi else 0
        await self.call(lambda conn: conn.lookupByName(name).reboot(flags))

    async def reset(self, name: str) -> None:
        """Hard reset, as the reset button: the guest restarts at once, in the same domain."""
        await self.call(lambda conn: conn.lookupByName(name).reset(0))

    async def domains(self) -> list[DomainInfo]:
        """Every active domain with its state and XML."""

        def listing(conn: libvirt.virConnect) -> list[DomainInfo]:
            found, seen = [], {}
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                try:
                    key = (dom.name(), dom.ID(), dom.UUIDString())
                    cached = self._xml_cache.get(key)
                    if cached is None:  # a domain's XML is fetched and parsed once per run, not at every sweep
                        xml = dom.XMLDesc(0)
                        cached = (xml, koala_tag(xml))
                    state = STATE_NAMES.get(dom.state()[0], "nostate")
                    found.append(DomainInfo(key[0], state, *cached, uuid=key[2]))
                    seen[key] = cached
                except libvirt.libvirtError as err:  # it went away while we looked
                    if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                        raise
            self._xml_cache = seen
            return found

        return await self.call(listing)

    async def state(self, name: str) -> str | None:
        """The domain's state name, or None when it does not exist."""

        def state(conn: libvirt.virConnect) -> str | None:
            try:
                return STATE_NAMES.get(conn.lookupByName(name).state()[0], "nostate")
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise

        return await self.call(state)

    async def xml(self, name: str, migratable: bool = False) -> str:
        flags = libvirt.VIR_DOMAIN_XML_MIGRATABLE if migratable else 0
        return await self.call(lambda conn: conn.lookupByName(name).XMLDesc(flags))

    async def job(self, name: str, completed: bool = False) -> dict[str, Any] | None:
        """libvirt's statistics of the domain's job (a migration), or of its last completed one; None when the domain
        does not exist."""

        def stats(conn: libvirt.virConnect) -> dict[str, Any] | None:
            try:
                dom = conn.lookupByName(name)
                return dict(dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED if completed else 0))
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise

        return await self.call(stats)

    async def version(self) -> int:
        """The hypervisor's version as libvirt numbers it (major * 1,000,000 + minor * 1,000 + micro)."""
        return await self.call(lambda conn: int(conn.getVersion()))

    async def abort_job(self, name: str) -> None:
        await self.call(lambda conn: conn.lookupByName(name).abortJob())

    async def host(self) -> tuple[int, int, str]:
        """(cpus, memory MiB, hypervisor type) of the host as libvirt sees it."""

        def info(conn: libvirt.virConnect) -> tuple[int, int, str]:
            _model, memory_mb, cpus, *_ = conn.getInfo()
            return int(cpus), int(memory_mb), conn.getType()

        return await self.call(info)
