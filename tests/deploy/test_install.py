"""`koala install`: units that systemd-analyze accepts, configuration templates that the services parse."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli.install_cmd import ROLES
from cli.services_cmd import service_class
from common.config import parse_conf

ETC = Path("/etc/koala")


def run_install(root: Path, *roles: str) -> subprocess.CompletedProcess:
    args = [arg for role in roles for arg in ("--role", role)]
    return subprocess.run(
        [sys.executable, "-m", "cli", "install", "--root", str(root), "--no-user", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_units_verify_and_configs_parse(tmp_path: Path) -> None:
    result = run_install(tmp_path, "all")
    assert result.returncode == 0, result.stderr
    units = sorted((tmp_path / "etc/systemd/system").glob("koala-*.service"))
    assert [u.name for u in units] == sorted(f"koala-{r}.service" for r in ROLES)
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: deploy/bootstrap.sh installs the systemd package")
    verify = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify.stdout + verify.stderr
    for role in ROLES:
        text = (tmp_path / "etc/systemd/system" / f"koala-{role}.service").read_text()
        assert f"{sys.prefix}/bin/koala {role} --config /etc/koala/{role}.conf" in text
        assert "Restart=on-failure" in text and "@" not in text.split("[Install]")[0].replace("@system", "")
        config_class = service_class(role).config_class
        conf = tmp_path / "etc/koala" / f"{role}.conf"
        config = config_class.from_settings(parse_conf(conf.read_text(), str(conf)), {})
        assert config.KOALA_PKI_DIR == ETC / "pki"


def test_hardening_fits_each_role(tmp_path: Path) -> None:
    assert run_install(tmp_path, "all").returncode == 0
    unit = {r: (tmp_path / "etc/systemd/system" / f"koala-{r}.service").read_text() for r in ROLES}
    for role in ("clc", "walrus"):  # plain network services: no privileges at all
        assert "User=koala" in unit[role] and "CapabilityBoundingSet=\n" in unit[role]
        assert "ProtectSystem=strict" in unit[role]
    assert "CAP_NET_ADMIN" in unit["cc"] and "AF_NETLINK" in unit["cc"]
    assert "libvirtd.service" in unit["nc"] and "KillMode=mixed" in unit["nc"]
    assert "Before=koala-cc.service" in unit["clc"]
    assert all("LimitNOFILE=65536" in text for text in unit.values())  # room for thousands of connections


def test_reinstall_keeps_the_admins_configuration(tmp_path: Path) -> None:
    assert run_install(tmp_path, "cc").returncode == 0
    conf = tmp_path / "etc/koala/cc.conf"
    conf.write_text(conf.read_text() + 'NODES="10.1.1.1 10.1.1.2"\n')
    assert run_install(tmp_path, "cc").returncode == 0
    assert 'NODES="10.1.1.1 10.1.1.2"' in conf.read_text()


def test_relative_paths_are_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli", "install", "--role", "nc", "--root", str(tmp_path), "--config-dir", "etc/koala"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "absolute" in result.stderr
