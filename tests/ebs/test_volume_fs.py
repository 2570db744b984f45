"""The volume directory's own XFS image (services/cluster_controller/storage/volume_fs.py) on this machine's ext4: made
and loop-mounted once (the loop device with direct I/O), mounted again from the same image after an unmount (a
reboot), left alone when it already holds files, and a half-made image (a crash during mkfs) made again."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from common.hostcmd import SubprocessRunner
from services.cluster_controller.storage import volume_fs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount)")


def _on_ext4(path: Path) -> None:
    kind = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True).stdout.strip()
    if kind != "ext2/ext3":
        pytest.skip(f"the test directory is on {kind}, not ext4")


def test_made_mounted_and_mounted_again(tmp_path: Path) -> None:
    _on_ext4(tmp_path)
    directory, runner = tmp_path / "volumes", SubprocessRunner()
    directory.mkdir()
    partial = volume_fs.image_path(directory).with_name("volumes.xfs.partial")
    partial.write_bytes(b"left by a crash during mkfs")
    try:
        assert not volume_fs.has_reflinks(directory)
        assert asyncio.run(volume_fs.ensure(directory, 1, runner))
        assert os.path.ismount(directory) and volume_fs.has_reflinks(directory) and not partial.exists()
        device = volume_fs.loop_device(directory)
        assert device is not None  # the image file read and written with O_DIRECT (no second page cache)
        assert Path(f"/sys/block/{Path(device).name}/loop/dio").read_text().strip() == "1"
        assert volume_fs.image_path(directory).stat().st_blocks * 512 < 200 << 20  # sparse: 1 GiB, little written
        (directory / "vol-00000001.img").write_bytes(b"kept")
        subprocess.run(["losetup", "--direct-io=off", device], check=True)  # as an older CC mounted it
        assert asyncio.run(volume_fs.ensure(directory, 1, runner))  # a CC restart: already there
        assert Path(f"/sys/block/{Path(device).name}/loop/dio").read_text().strip() == "1"
        asyncio.run(volume_fs.release(directory, runner))
        assert not os.path.ismount(directory) and not any(directory.iterdir())
        assert asyncio.run(volume_fs.ensure(directory, 1, runner))  # after a reboot: the same image again
        assert (directory / "vol-00000001.img").read_bytes() == b"kept"
        device = volume_fs.loop_device(directory)
        assert device is not None and Path(f"/sys/block/{Path(device).name}/loop/dio").read_text().strip() == "1"
    finally:
        asyncio.run(volume_fs.release(directory, runner))
    assert not os.path.ismount(directory)


def test_directory_with_files_left_alone(tmp_path: Path) -> None:
    _on_ext4(tmp_path)
    directory = tmp_path / "volumes"
    directory.mkdir()
    (directory / "vol-00000002.img").write_bytes(b"an older cloud's volume")
    assert not asyncio.run(volume_fs.ensure(directory, 1, SubprocessRunner()))
    assert not os.path.ismount(directory) and not volume_fs.image_path(directory).exists()
    assert (directory / "vol-00000002.img").read_bytes() == b"an older cloud's volume"


def test_image_that_cannot_be_mounted_stops_the_start(tmp_path: Path) -> None:
    _on_ext4(tmp_path)
    directory = tmp_path / "volumes"
    volume_fs.image_path(directory).write_bytes(b"not a file system")
    with pytest.raises(volume_fs.VolumeFsError):
        asyncio.run(volume_fs.ensure(directory, 1, SubprocessRunner()))
    assert not os.path.ismount(directory)
