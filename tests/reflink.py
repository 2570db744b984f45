"""A directory on a file system with reflinks, for EBS volumes whose snapshots read frozen copies
(services/cluster_controller/storage/extents.py): XFS (reflink=1, xfsprogs) in a sparse image file, mounted through a
loop device (the kernels here have XFS and loop built in), unmounted and removed afterwards."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def reflink_dir(work: Path, size_gib: int = 4) -> Iterator[Path]:
    image, mount = work / "xfs.img", work / "xfs"
    mount.mkdir(parents=True, exist_ok=True)
    with image.open("wb") as file:
        file.truncate(size_gib << 30)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)  # busy: detached, freed when let go
        image.unlink(missing_ok=True)
