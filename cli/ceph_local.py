"""A single-node Ceph cluster in one directory, from Debian's ceph packages: one monitor, one manager and one
OSD (BlueStore on a sparse file, or MemStore), on loopback or on one address of the host given at creation.
For `koala up` on one machine, the tests and the benchmarks; a real deployment runs Ceph on its own hosts
(deploy/ceph.md) and Koala only gets a ceph.conf and a keyring.

Layout of DIR:
  ceph.conf                    monitor address, single-replica pool defaults, one keyring per entity
  ceph.client.admin.keyring    the cluster's admin (used here only to set things up)
  ceph.client.koala.keyring    the key Koala's services use (see CLIENT_CAPS)
  mon/ mgr/ osd/ osd.block     daemon data; log/ run/ their logs, sockets and pid files

No kernel module is involved (no krbd): clients use librados and librbd in user space, QEMU its rbd driver.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.daemon import PidFile

CLIENT = "koala"
WALRUS_POOL = "koala-walrus"  # the pools `koala up --ceph` and the tests make
EBS_POOL = "koala-ebs"
DAEMONS = (("ceph-mon", "mon.a", "a"), ("ceph-mgr", "mgr.x", "x"), ("ceph-osd", "osd.0", "0"))  # start order
# What Koala's services may do: read the cluster maps, use RBD images (incl. blocklisting a dead client's
# watchers), read and write objects in every pool. Not create or delete pools: the admin does that.
CLIENT_CAPS = ("mon", "profile rbd", "osd", "profile rbd, allow rwx")
START_TIMEOUT = 90.0


class CephError(RuntimeError):
    pass


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _config(root: Path, fsid: str, address: str, port: int, objectstore: str, block_bytes: int) -> str:
    store = (
        f"osd objectstore = bluestore\nbluestore block path = {root}/osd.block\nbluestore block create = true\n"
        f"bluestore block size = {block_bytes}\nbluestore fsck on mkfs = false\n"
        "bluestore cache autotune = false\nbluestore cache size = 134217728\n"
        if objectstore == "bluestore"
        else f"osd objectstore = memstore\nmemstore device bytes = {block_bytes}\n"
    )
    return f"""[global]
fsid = {fsid}
mon host = v2:{address}:{port}
public addr = {address}
ms bind msgr1 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = {root}/ceph.$name.keyring
run dir = {root}/run
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd pool default pg num = 8
osd pool default pgp num = 8
mon max pg per osd = 1000
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
rbd default features = layering, exclusive-lock, object-map, fast-diff, deep-flatten

[mon]
pid file = {root}/run/$name.pid
admin socket = {root}/run/$name.asok
log file = {root}/log/$name.log
mon data = {root}/mon
mon cluster log file = {root}/log/cluster.log

[mgr]
pid file = {root}/run/$name.pid
admin socket = {root}/run/$name.asok
log file = {root}/log/$name.log
mgr data = {root}/mgr

[osd]
pid file = {root}/run/$name.pid
admin socket = {root}/run/$name.asok
log file = {root}/log/$name.log
osd data = {root}/osd
osd memory target = 536870912
{store}"""


@dataclass
class CephCluster:
    """A running (or stopped) single-node cluster in `root`."""

    root: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "ceph.conf"

    @property
    def client_keyring(self) -> Path:
        return self.root / f"ceph.client.{CLIENT}.keyring"

    @property
    def mon_host(self) -> str:
        """ADDRESS:PORT of the monitor (msgr2)."""
        for line in self.conf.read_text().splitlines():
            if line.startswith("mon host"):
                return line.split("v2:", 1)[1].strip()
        raise CephError("no monitor address in ceph.conf")

    def ceph(self, *args: str, timeout: float = 60.0) -> str:
        """Run the `ceph` tool as the cluster's admin; its standard output."""
        argv = ["ceph", "-c", str(self.conf), "--connect-timeout", "20", *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode:
            raise CephError(f"{' '.join(args)}: {done.stderr.strip()[-500:]}")
        return done.stdout

    def pid_file(self, name: str) -> PidFile:
        """A daemon's pid file, trusted while the process names this cluster's ceph.conf."""
        return PidFile(self.root / "run" / f"{name}.pid", str(self.conf))

    def _daemon(self, argv: list[str], preexec: Callable[[], None] | None) -> None:
        log = open(self.root / "log" / "daemons.out", "ab")
        with log:
            process = subprocess.Popen(
                [*argv, "-f", "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=preexec,
                start_new_session=preexec is None,
            )
        self.processes.append(process)
        name = next((n for tool, n, ident in DAEMONS if argv == [tool, "-i", ident]), "")
        if name:
            self.pid_file(name).write(process.pid)

    def start(self, preexec: Callable[[], None] | None = None) -> None:
        """Start the daemons of a cluster made earlier (those not running), and wait for the OSD."""
        for tool, name, ident in DAEMONS:
            if self.pid_file(name).running() is None:
                self._daemon([tool, "-i", ident], preexec)
        self.wait_ready()

    def stop_detached(self, timeout: float = 20.0) -> list[str]:
        """Stop the daemons by their pid files (started by another process: `koala up`), OSD first."""
        return [name for _, name, _ in reversed(DAEMONS) if self.pid_file(name).stop(timeout)]

    @classmethod
    def create(
        cls,
        root: Path,
        objectstore: str = "bluestore",
        size_bytes: int = 8 << 30,
        preexec: Callable[[], None] | None = None,
        address: str = "127.0.0.1",
    ) -> CephCluster:
        """Make and start a new cluster in `root` (an empty or absent directory). `preexec` runs in each daemon
        before it starts (tests pass one that ties the daemon's life to theirs); without it daemons detach.
        The monitor, manager and OSD listen on `address` for good (the monitor map holds it): an address of this
        host that every client reaches, QEMU included (the all-in-one cloud's runs in a network namespace)."""
        if objectstore not in ("bluestore", "memstore"):
            raise ValueError(objectstore)
        root = Path(root).resolve()
        for sub in ("mon", "mgr", "osd", "log", "run"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        cluster = cls(root)
        fsid, port = str(uuid.uuid4()), _free_port(address)
        cluster.conf.write_text(_config(root, fsid, address, port, objectstore, size_bytes))
        admin = root / "ceph.client.admin.keyring"
        mon_keyring = root / "ceph.mon.keyring"
        run = cluster._run
        run(["ceph-authtool", "--create-keyring", str(mon_keyring), "--gen-key", "-n", "mon.",
             "--cap", "mon", "allow *"])  # fmt: skip
        caps = ["--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *"]
        run(["ceph-authtool", "--create-keyring", str(admin), "--gen-key", "-n", "client.admin", *caps])
        run(["ceph-authtool", str(mon_keyring), "--import-keyring", str(admin)])
        monmap = root / "monmap"
        run(["monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v2:{address}:{port}]", str(monmap)])
        run(["ceph-mon", "-c", str(cluster.conf), "--mkfs", "-i", "a", "--monmap", str(monmap),
             "--keyring", str(mon_keyring)])  # fmt: skip
        try:
            cluster._daemon(["ceph-mon", "-i", "a"], preexec)
            mgr_key = cluster.ceph("auth", "get-or-create", "mgr.x", "mon", "allow profile mgr", "osd", "allow *")
            (root / "ceph.mgr.x.keyring").write_text(mgr_key)
            cluster._daemon(["ceph-mgr", "-i", "x"], preexec)
            osd_uuid, osd_key = str(uuid.uuid4()), run(["ceph-authtool", "--gen-print-key"]).strip()
            secret = root / "osd-secret.json"
            secret.write_text(json.dumps({"cephx_secret": osd_key}))
            osd_id = cluster.ceph("osd", "new", osd_uuid, "-i", str(secret)).strip()
            secret.unlink()
            run(["ceph-authtool", "--create-keyring", str(root / f"ceph.osd.{osd_id}.keyring"),
                 "--name", f"osd.{osd_id}", "--add-key", osd_key])  # fmt: skip
            run(["ceph-osd", "-c", str(cluster.conf), "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid])
            cluster._daemon(["ceph-osd", "-i", osd_id], preexec)
            kind, mon_caps, osd_kind, osd_caps = CLIENT_CAPS
            key = cluster.ceph("auth", "get-or-create", f"client.{CLIENT}", kind, mon_caps, osd_kind, osd_caps)
            cluster.client_keyring.write_text(key)
            cluster.client_keyring.chmod(0o600)
            cluster.wait_ready()
            # RBD clones of format 2 (a snapshot deletable while volumes made from it live): mimic clients or newer
            cluster.ceph("osd", "set-require-min-compat-client", "mimic")
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _run(self, argv: list[str]) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode:
            raise CephError(f"{argv[0]}: {(done.stderr or done.stdout).strip()[-500:]}")
        return done.stdout

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until the OSD is up and in."""
        deadline = time.monotonic() + timeout
        while True:
            for process in self.processes:
                if process.poll() is not None:
                    raise CephError(f"{process.args!r} exited ({process.returncode}); see {self.root}/log")
            with contextlib.suppress(CephError, subprocess.TimeoutExpired, ValueError):
                status = json.loads(self.ceph("osd", "stat", "--format", "json", timeout=20))
                if status.get("num_up_osds", 0) >= 1 and status.get("num_in_osds", 0) >= 1:
                    return
            if time.monotonic() > deadline:
                raise CephError(f"the OSD did not come up in {timeout:.0f} s; see {self.root}/log")
            time.sleep(0.3)

    def create_pool(self, name: str, application: str, pgs: int = 8) -> None:
        """A pool (idempotent), tagged for `application` ("rados" for Walrus, "rbd" for volumes)."""
        self.ceph("osd", "pool", "create", name, str(pgs))
        self.ceph("osd", "pool", "application", "enable", name, application, "--yes-i-really-mean-it")

    def start_rgw(self, preexec: Callable[[], None] | None = None) -> str:
        """Start a RADOS Gateway (Debian's radosgw, S3 API) on a free loopback port; its URL. For comparisons:
        Koala's own S3 front end is Walrus."""
        port = _free_port()
        (self.root / "rgw").mkdir(exist_ok=True)
        with self.conf.open("a") as conf:
            conf.write(
                f"\n[client.rgw.a]\nrgw frontends = beast endpoint=127.0.0.1:{port}\nrgw data = {self.root}/rgw\n"
                f"log file = {self.root}/log/$name.log\nadmin socket = {self.root}/run/$name.asok\n"
            )
        key = self.ceph("auth", "get-or-create", "client.rgw.a", "mon", "allow rw", "osd", "allow rwx")
        (self.root / "ceph.client.rgw.a.keyring").write_text(key)
        self._daemon(["radosgw", "-n", "client.rgw.a"], preexec)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return url
            if time.monotonic() > deadline or self.processes[-1].poll() is not None:
                raise CephError(f"radosgw did not start; see {self.root}/log")
            time.sleep(0.3)

    def rgw_user(self, uid: str) -> tuple[str, str]:
        """A RADOS Gateway user's (access key, secret key), made if missing."""
        done = subprocess.run(
            ["radosgw-admin", "-c", str(self.conf), "user", "create", "--uid", uid, "--display-name", uid],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if done.returncode:
            done = subprocess.run(["radosgw-admin", "-c", str(self.conf), "user", "info", "--uid", uid],
                                  capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        if done.returncode:
            raise CephError(f"radosgw-admin: {done.stderr.strip()[-300:]}")
        key = json.loads(done.stdout)["keys"][0]
        return key["access_key"], key["secret_key"]

    def stop(self) -> None:
        """Stop the daemons (OSD first); the directory stays."""
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    def client_settings(self) -> dict[str, str]:
        """KOALA_CEPH_* for a Koala service reaching the cluster as client.koala."""
        return {
            "KOALA_CEPH_CONF": str(self.conf),
            "KOALA_CEPH_USER": CLIENT,
            "KOALA_CEPH_KEYRING": str(self.client_keyring),
        }

    def koala_settings(self) -> dict[str, dict[str, str]]:
        """Per role: a cloud keeping Walrus's object data (namespace `walrus`) and the zone's volumes here."""
        client = self.client_settings()
        return {
            "walrus": {**client, "KOALA_WALRUS_STORAGE": "rados", "KOALA_WALRUS_RADOS_POOL": WALRUS_POOL},
            "cc": {**client, "KOALA_EBS_BACKEND": "rbd", "KOALA_EBS_RBD_POOL": EBS_POOL},
            "nc": client,
        }
