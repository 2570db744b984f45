"""`koala nc-fleet` refuses what would not be a fleet of distinct simulated hosts, with a clear message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from common.config import render_conf
from services.node_controller.fleet import FleetError, load


def _conf(directory: Path, name: str, port: int, **extra: object) -> Path:
    values = {
        "KOALA_SERVICE_ID": f"nc-{name}",
        "KOALA_STATE_DIR": directory / name,
        "KOALA_PKI_DIR": directory / "pki",
        "NC_PORT": port,
        "HYPERVISOR": "test",
        "KOALA_LIBVIRT_URI": f"test://{directory / name / 'node.xml'}",
        **extra,
    }
    path = directory / f"{name}.conf"
    path.write_text(render_conf(values))
    return path


def test_fleet_configurations_are_checked(tmp_path: Path) -> None:
    good = [_conf(tmp_path, f"n{i}", 20000 + i) for i in range(3)]
    assert [c.KOALA_SERVICE_ID for c in load(good)] == ["nc-n0", "nc-n1", "nc-n2"]
    with pytest.raises(FleetError, match="HYPERVISOR=qemu"):
        load([*good, _conf(tmp_path, "real", 20010, HYPERVISOR="qemu", KOALA_LIBVIRT_URI="qemu:///system")])
    with pytest.raises(FleetError, match="NC_PORT"):
        load([*good, _conf(tmp_path, "twin", 20001)])
    with pytest.raises(FleetError, match="KOALA_LIBVIRT_URI"):
        load([*good, _conf(tmp_path, "shared", 20011, KOALA_LIBVIRT_URI=f"test://{tmp_path / 'n0' / 'node.xml'}")])
    with pytest.raises(FleetError, match="no node"):
        load([])
    (tmp_path / "bad.conf").write_text("NC_PORT=notaport\n")
    with pytest.raises(FleetError, match=r"bad\.conf"):
        load([tmp_path / "bad.conf"])
    # The command says so and exits 2, before starting anything.
    done = subprocess.run(
        [sys.executable, "-m", "cli", "nc-fleet", "--config", str(good[0]), "--config", str(tmp_path / "bad.conf")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "cannot start" in done.stderr and "bad.conf" in done.stderr
