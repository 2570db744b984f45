"""`koala down --purge`: after the services stopped, remove everything else the all-in-one cloud made.

Its guests (libvirt domains whose disks lie in the NC's instance path: other clouds' guests on the same
libvirtd are left alone), its network (the router namespace with the cloud's libvirtd and dnsmasq, the link to
the public pool), its own PostgreSQL server and Ceph cluster (`--database postgresql`, `--ceph`: stopped before
their directories go) and its state directory's own entries. Each step is idempotent, so a purge that was
interrupted can simply be run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from cli.allinone import AllInOne
from common.config import parse_conf
from common.daemon import alive
from common.mounts import mount_table

STATE_ENTRIES = (
    "conf",
    "data",
    "logs",
    "run",
    "pki",
    "endpoints.json",
    "eucarc",
    "images.json",
    "network.json",
    "libvirt",
    "ceph",
    "postgres",
)
ENGINE_DIRS = ("ceph", "postgres")  # their daemons name a file in them on their command line
ENGINE_PROGRAMS = {"ceph-mon", "ceph-mgr", "ceph-osd", "radosgw", "postgres"}
LIBVIRT_URIS = {"kvm": "qemu:///system", "qemu": "qemu:///system", "xen": "xen:///system"}


def _nc_settings(cloud: AllInOne) -> dict[str, str]:
    try:
        return {key: setting.value for key, setting in parse_conf(cloud.conf_path("nc").read_text()).items()}
    except OSError:
        return {}


def _virsh(uri: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=60)


def destroy_guests(cloud: AllInOne) -> list[str]:
    """Destroy and undefine this cloud's domains; return their names."""
    settings = _nc_settings(cloud)
    uri = settings.get("KOALA_LIBVIRT_URI") or LIBVIRT_URIS.get(settings.get("HYPERVISOR", ""), "")
    if not uri or shutil.which("virsh") is None:
        return []  # libvirt's test driver keeps its domains in the NC's process: they went with it
    state = Path(settings.get("KOALA_STATE_DIR") or cloud.dir / "data" / "nc-node1")
    instance_path = Path(settings.get("INSTANCE_PATH") or state / "instances").resolve()
    listing = _virsh(uri, "list", "--all", "--name")
    if listing.returncode:
        return []
    gone = []
    for name in listing.stdout.split():
        xml = _virsh(uri, "dumpxml", name).stdout
        if f"{instance_path}/" not in xml:
            continue
        _virsh(uri, "destroy", name)
        _virsh(uri, "undefine", name)  # a persistent domain; a transient one went with `destroy`
        gone.append(name)
    return gone


def unmount_under(directory: Path) -> list[str]:
    """Unmount the file systems mounted inside the state directory (the zone's XFS volume image), lazily when one is
    still busy, before its entries are removed: removing files through a mount would not free the image."""
    if not directory.exists():
        return []
    root = directory.resolve()
    points = []
    for mount in mount_table():
        point = Path(mount.point)
        if point != root and root in point.parents:
            points.append(point)
    done = []
    for point in sorted(points, key=lambda p: len(p.parts), reverse=True):  # the innermost first
        if subprocess.run(["umount", str(point)], capture_output=True, timeout=60).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=60)
        done.append(str(point))
    return done


def engine_processes(cloud: AllInOne) -> list[int]:
    """The Ceph daemons and PostgreSQL servers of this cloud still running (one whose pid file was lost, say), found
    by a path in DIR/ceph or DIR/postgres on their command line, with their children (PostgreSQL's backends)."""
    roots = tuple(f"{cloud.dir / name}/".encode() for name in ENGINE_DIRS)
    parents: dict[int, int] = {}
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() not in ENGINE_PROGRAMS:
                continue
            args = (entry / "cmdline").read_bytes().split(b"\0")
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if any(arg.startswith(roots) for arg in args):
            found.add(int(entry.name))
    children = {pid for pid, parent in parents.items() if parent in found}
    return sorted(found | children)


def stop_engines(cloud: AllInOne, timeout: float = 10.0) -> list[int]:
    """Stop what `engine_processes` finds, by pid: SIGTERM, then SIGKILL after `timeout` s; the pids stopped.
    `koala down` stopped them already through their pid files; this is for those it could not."""
    pids = engine_processes(cloud)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return pids


def purge(cloud: AllInOne) -> Iterator[str]:
    guests = destroy_guests(cloud)
    if guests:
        yield f"terminated: {', '.join(guests)}"
    network = cloud.network() if cloud.dir.exists() else None
    if network is not None:
        asyncio.run(network.teardown())
        yield f"removed network: namespace {network.netns}, links {', '.join(network.links)}"
    stopped = stop_engines(cloud)
    if stopped:
        yield f"stopped leftover Ceph/PostgreSQL processes: {', '.join(map(str, stopped))}"
    for mount in unmount_under(cloud.dir):
        yield f"unmounted {mount}"
    for entry in STATE_ENTRIES:
        path = cloud.dir / entry
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    try:
        cloud.dir.rmdir()  # only when nothing of anyone else's is in it
    except OSError:
        pass
    yield f"removed the cloud's state in {cloud.dir}"
