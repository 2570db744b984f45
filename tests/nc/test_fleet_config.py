"""`koala nc-fleet` refuses what would not be a fleet of distinct simulated hosts, with a clear message."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from common import pki
from common.config import render_conf
from services.node_controller.fleet import FleetError, load
from tests.harness import free_port_run
from tests.nc.support import node_file


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


def test_a_fleet_that_cannot_start_exits(tmp_path: Path) -> None:
    """One node's port taken (by another program, after the ports were chosen): the fleet says so and exits 1,
    its other nodes' databases and hypervisors closed, rather than hang on them."""
    store = pki.PkiDir(tmp_path / "pki")
    store.init()
    names = [f"n{i}" for i in range(20)]
    store.ensure_many([f"nc-{name}" for name in names], "nc")
    base = free_port_run(len(names))
    conf_dir = tmp_path / "fleet"
    conf_dir.mkdir()
    for n, name in enumerate(names):
        (tmp_path / name).mkdir()
        node_file(tmp_path / name / "node.xml", cpus=2, memory_gib=2)
        _conf(tmp_path, name, base + n).rename(conf_dir / f"{name}.conf")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base + 15))
        squatter.listen()
        done = subprocess.run(
            [sys.executable, "-m", "cli", "nc-fleet", "--config-dir", str(conf_dir)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert "cannot start" in done.stderr and str(base + 15) in done.stderr
