"""Instance disks from stamps (disks.py): the real tools run once per shape, and each instance's file is what
the tool would have written (a qcow2 overlay byte for byte; a swap area with its own UUID)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from services.node_controller import disks


def _blkid(path: Path) -> str:
    return subprocess.run(["blkid", "-o", "export", str(path)], capture_output=True, text=True, check=True).stdout


def test_stamped_disks_are_the_tools_output(tmp_path: Path) -> None:
    image = tmp_path / "image.img"
    image.write_bytes(b"\x5a" * (1 << 20))
    templates = tmp_path / ".templates"
    stamps = disks.STAMPS
    made_before = stamps.made

    async def launch(count: int) -> list[list[disks.DiskSpec]]:
        built = []
        for n in range(count):
            directory = tmp_path / f"i-{n:08x}"
            directory.mkdir()
            built.append(await disks.make_disks(image, directory, 2, 32, "overlay", templates))
        return built

    built = asyncio.run(launch(5))
    # qemu-img for the root and the ephemeral overlays, mkswap once: three tool runs for five instances.
    assert stamps.made - made_before == 3
    assert [d.role for d in built[0]] == ["root", "ephemeral", "swap"]
    reference = tmp_path / "reference.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image), str(reference),
                    str(2 << 30)], check=True)  # fmt: skip
    for specs in built:
        root, ephemeral, swap = (d.path for d in specs)
        assert root.read_bytes() == reference.read_bytes()
        subprocess.run(["qemu-img", "check", "-q", str(root)], check=True)
        subprocess.run(["qemu-img", "check", "-q", str(ephemeral)], check=True)
        info = subprocess.run(["qemu-img", "info", str(ephemeral)], capture_output=True, text=True).stdout
        assert "ephemeral-ext3-" in info and "backing file format: raw" in info
        assert "TYPE=swap" in _blkid(swap) and "LABEL=swap" in _blkid(swap)
        assert swap.stat().st_size == 32 << 20 and swap.stat().st_blocks * 512 <= 64 << 10  # sparse
    uuids = {line for specs in built for line in _blkid(specs[2].path).splitlines() if line.startswith("UUID=")}
    assert len(uuids) == 5  # each swap area has its own UUID
    # Apart from its UUID, a stamped swap area is mkswap's own header.
    reference_swap = tmp_path / "reference.swap"
    with reference_swap.open("wb") as handle:
        handle.truncate(32 << 20)
    subprocess.run(["mkswap", "-L", "swap", str(reference_swap)], check=True, capture_output=True)
    ours, theirs = built[0][2].path.read_bytes()[:4096], reference_swap.read_bytes()[:4096]
    uuid_at = disks.SWAP_UUID_OFFSET
    assert ours[:uuid_at] == theirs[:uuid_at] and ours[uuid_at + 16 :] == theirs[uuid_at + 16 :]
    # Staging again after a crash rewrites the files in place.
    asyncio.run(disks.make_disks(image, built[0][0].path.parent, 2, 32, "overlay", templates))
    assert built[0][0].path.read_bytes() == reference.read_bytes()


def test_a_file_with_much_data_is_no_stamp(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"\x01" * (disks.MAX_STAMP_DATA + 4096))
    with pytest.raises(disks.DiskError, match="too large"):
        disks.capture(path)
    sparse = tmp_path / "sparse"
    with sparse.open("wb") as handle:
        handle.truncate(1 << 30)
        handle.seek(5 << 20)
        handle.write(b"data")
    stamp = disks.capture(sparse)
    assert stamp.size == 1 << 30 and [(o, len(b)) for o, b in stamp.blocks] == [(5 << 20, 4096)]
