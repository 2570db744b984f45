"""Frozen copies and changed chunks from the file system's extent maps (services/cluster_controller/storage/
extents.py), on a real XFS with reflinks in a loop-mounted image and on the ext4 the tests run on (no reflinks: no
copy, so snapshots read everything)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.cluster_controller.storage import extents
from tests.reflink import reflink_dir

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount)")
MIB = 1 << 20
CHUNK = 4 * MIB


@pytest.fixture(scope="module")
def xfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with reflink_dir(tmp_path_factory.mktemp("xfs"), 1) as mount:
        yield mount


def _write(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        file.write(data)


def test_changed_chunks_between_frozen_copies(xfs: Path) -> None:
    volume = xfs / "vol-00000001.img"
    with volume.open("wb") as file:  # 64 MiB: 10 chunks of data, the rest a hole
        file.write(os.urandom(10 * CHUNK))
        file.truncate(16 * CHUNK)
    first, second, third = (xfs / "frozen" / f"{n}.img" for n in ("a", "b", "c"))
    assert extents.clone(volume, first)
    _write(volume, 3 * CHUNK + 5, b"x")  # one byte inside chunk 3
    _write(volume, 12 * CHUNK, b"y" * 4096)  # into the hole: chunk 12
    same = (volume.read_bytes())[7 * CHUNK : 8 * CHUNK]
    _write(volume, 7 * CHUNK, same)  # rewritten with the same bytes: moved blocks, so read again (and found equal)
    assert extents.clone(volume, second)
    assert extents.changed_chunks(first, second, CHUNK, 16) == {3, 7, 12}
    assert first.read_bytes()[3 * CHUNK + 5 : 3 * CHUNK + 6] != b"x"  # the first copy kept its moment
    assert extents.clone(volume, third)  # nothing written since
    assert extents.changed_chunks(second, third, CHUNK, 16) == set()
    assert third.read_bytes() == volume.read_bytes()


def test_no_reflinks_no_copy(tmp_path: Path) -> None:
    kind = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True).stdout.strip()
    if kind != "ext2/ext3":
        pytest.skip(f"the test directory is on {kind}, not ext4")
    volume = tmp_path / "vol-00000002.img"
    volume.write_bytes(os.urandom(MIB))
    copy = tmp_path / "frozen" / "copy.img"
    assert not extents.clone(volume, copy) and not copy.exists()
