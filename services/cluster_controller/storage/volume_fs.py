"""The file system under the zone's volume files. Snapshots after the first read only the chunks written since when
that file system has reflinks (extents.py); ext4, the usual root file system, has none, and the CC cannot learn
from tgtd which blocks a guest wrote. So, when KOALA_EBS_XFS_IMAGE_GB is set and the volume directory's own file
system has no reflinks, the CC makes an XFS file system (reflink=1) in a sparse image file beside the directory and
mounts it on the directory through a loop device (the kernels here have XFS and loop built in; no module is
loaded), as Eucalyptus's storage controller kept its volumes on loop devices.

Every step can be repeated after a crash: the image is made under a temporary name and renamed once mkfs finished;
a CC that restarts finds the directory mounted already, or mounts the image again (after a reboot). A directory that
already holds files while no image exists is left as it is (mounting over it would hide its volumes); an image that
exists but cannot be mounted stops the start, for the same reason. The mount outlives the CC, as tgtd's exports do;
`koala down --purge` (or `release`) unmounts it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from common.hostcmd import CommandFailed, Runner
from common.mounts import mount_table
from services.cluster_controller.storage import extents

log = logging.getLogger("koala.cc.storage")
IMAGE_SUFFIX = ".xfs"
PROBE = ".reflink-probe"


class VolumeFsError(Exception):
    pass


def image_path(directory: Path) -> Path:
    """The image file of the directory's XFS, beside it (never inside: the mount would hide it)."""
    return directory.with_name(directory.name + IMAGE_SUFFIX)


def has_reflinks(directory: Path) -> bool:
    """Whether files in `directory` can share blocks (a one-byte probe file cloned and both removed)."""
    source, copy = directory / PROBE, directory / f"{PROBE}.copy"
    try:
        source.write_bytes(b"\0")
        return extents.clone(source, copy)
    finally:
        copy.unlink(missing_ok=True)
        source.unlink(missing_ok=True)


def _prepare(directory: Path) -> str:
    """What `ensure` has to do: 'ready' (reflinks already), 'mount' (an image to mount), 'make' (no image yet), or
    'occupied' (files in the directory and no image, or another file system mounted on it: left alone)."""
    directory.mkdir(parents=True, exist_ok=True)
    if has_reflinks(directory):
        return "ready"
    if os.path.ismount(directory):
        return "occupied"  # another file system mounted there by the admin
    if image_path(directory).exists():
        return "mount"
    if any(directory.iterdir()):
        return "occupied"
    return "make"


def _sparse(path: Path, size_gb: int) -> None:
    with open(path, "wb") as file:
        file.truncate(size_gb << 30)


async def ensure(directory: Path, size_gb: int, runner: Runner) -> bool:
    """Put `directory` on a file system with reflinks, making and mounting the XFS image if need be; True when it
    has reflinks afterwards. Raises VolumeFsError when an existing image cannot be mounted."""
    step = await asyncio.to_thread(_prepare, directory)
    if step == "ready":
        await _direct_io(directory, runner)  # mounted before a CC restart (by an older CC, perhaps)
        return True
    if step == "occupied":
        log.warning("%s is not empty, or another file system is mounted there, and has no reflinks: volumes stay "
                    "there, and each snapshot reads its volume in full", directory)  # fmt: skip
        return False
    image = image_path(directory)
    if step == "make":
        partial = image.with_name(image.name + ".partial")
        try:
            await asyncio.to_thread(_sparse, partial, size_gb)
            await runner.run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(partial)])
        except (CommandFailed, OSError) as err:
            await asyncio.to_thread(partial.unlink, missing_ok=True)
            log.warning("no XFS image for %s (%s): each snapshot reads its volume in full", directory, err)
            return False
        await asyncio.to_thread(partial.rename, image)
        log.info("made a %d GiB XFS image with reflinks for the volumes: %s", size_gb, image)
    try:
        await runner.run(["mount", "-o", "loop", str(image), str(directory)])
    except (CommandFailed, OSError) as err:
        raise VolumeFsError(f"cannot mount {image} on {directory}: {err}") from None
    await _direct_io(directory, runner)
    if not await asyncio.to_thread(has_reflinks, directory):
        raise VolumeFsError(f"{image} mounted on {directory} has no reflinks")
    log.info("volumes on %s (XFS with reflinks, mounted from %s)", directory, image)
    return True


def loop_device(directory: Path) -> str | None:
    """The loop device of the directory's own image mounted on it, if any."""
    target, image = os.path.realpath(directory), os.path.realpath(image_path(directory))
    found = None
    for mount in mount_table():
        if mount.point == target and mount.source.startswith("/dev/loop"):
            found = mount.source  # the last one: a later mount hides an earlier one
    if found is None:
        return None
    try:
        backing = Path(f"/sys/block/{Path(found).name}/loop/backing_file").read_text().strip()
    except OSError:
        return None
    return found if backing == image else None  # another loop device there is the admin's, left alone


async def _direct_io(directory: Path, runner: Runner) -> None:
    """The loop device reads and writes its image file with O_DIRECT: otherwise every block tgtd writes is cached
    twice (XFS's page cache, then the image file's on ext4) and copied once more, and a guest's flush writes the
    whole volume through both at once (in a guest, 1 MiB writes went from about 0.7-0.8x to 0.9x of a local disk's;
    bench/ebs_bench.py). Flushes still reach the disk (the loop device fsyncs its file). A file system that refuses
    O_DIRECT for the image (tmpfs) keeps the buffered loop device."""
    device = await asyncio.to_thread(loop_device, directory)
    if device is None:
        return
    try:
        await runner.run(["losetup", "--direct-io=on", device])
    except (CommandFailed, OSError) as err:
        log.warning("%s reads and writes its image through the page cache (no direct I/O: %s)", device, err)


async def release(directory: Path, runner: Runner) -> None:
    """Unmount the directory's XFS image if it is mounted (lazily when tgtd still holds a volume open: the loop
    device goes once it lets go); the image file stays."""
    if not await asyncio.to_thread(os.path.ismount, directory):
        return
    try:
        await runner.run(["umount", str(directory)])
    except CommandFailed:
        await runner.run(["umount", "-l", str(directory)])
