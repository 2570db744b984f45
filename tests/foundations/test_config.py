"""The eucalyptus.conf-style parser, the per-service models and their errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from common.config import ConfigError, parse_conf
from services.cluster_controller.config import ClusterControllerConfig

BASE = (
    'KOALA_SERVICE_ID="cc-zone1"\nKOALA_STATE_DIR=/tmp/x\nKOALA_PKI_DIR=/tmp/p\nKOALA_ZONE=zone1\n'
    "KOALA_CLC_URL=http://127.0.0.1:8773\n"
)


def load(text: str, environ: dict[str, str] | None = None) -> ClusterControllerConfig:
    return ClusterControllerConfig.from_settings(parse_conf(BASE + text, "eucalyptus.conf"), environ or {})


def test_shell_syntax() -> None:
    settings = parse_conf(
        "# a comment\n"
        'NODES="10.0.0.1 10.0.0.2"  # trailing comment\n'
        "SCHEDPOLICY='GREEDY'\n"
        "export CC_PORT=8774\n"
        'VNET_MACMAP="AA:DD:11:CE:FF:ED=192.168.1.2 \\\n'
        'AA:DD:11:CE:FF:EE=192.168.1.3"\n'
        'EMPTY=""\n'
    )
    assert settings["NODES"].value == "10.0.0.1 10.0.0.2"
    assert settings["SCHEDPOLICY"].value == "GREEDY"
    assert settings["CC_PORT"].value == "8774"
    assert settings["VNET_MACMAP"].value == "AA:DD:11:CE:FF:ED=192.168.1.2 AA:DD:11:CE:FF:EE=192.168.1.3"
    assert settings["VNET_MACMAP"].source == "<config>:5"
    assert settings["EMPTY"].value == ""


def test_model_values_and_defaults() -> None:
    config = load('NODES="10.0.0.1 10.0.0.2:9000"\n')
    assert config.node_urls() == ["http://10.0.0.1:8775", "http://10.0.0.2:9000"]
    assert config.CC_PORT == 8774


def test_unknown_key_names_file_and_line() -> None:
    with pytest.raises(ConfigError, match=r"eucalyptus\.conf:7: unknown key NODEZ"):
        load("\nNODEZ=1\n")


def test_unused_eucalyptus_keys_are_ignored() -> None:
    config = load('HYPERVISOR="kvm"\nINSTANCE_PATH=/var/lib/instances\n')
    assert config.CC_PORT == 8774


def test_bad_value_names_line_and_key() -> None:
    with pytest.raises(ConfigError, match=r"eucalyptus\.conf:6: CC_PORT: .*integer"):
        load("CC_PORT=eighty\n")


def test_missing_required_key() -> None:
    with pytest.raises(ConfigError, match="missing: KOALA_ZONE"):
        ClusterControllerConfig.from_settings(
            parse_conf("KOALA_SERVICE_ID=x\nKOALA_STATE_DIR=/\nKOALA_PKI_DIR=/\nKOALA_CLC_URL=u\n"), {}
        )


@pytest.mark.parametrize("text", ['NODES="unterminated\n', "just words\n", "1KEY=x\n", "A=1 B=2\n", "X=\\\n"])
def test_syntax_errors(text: str) -> None:
    with pytest.raises(ConfigError, match=r"eucalyptus\.conf:6"):
        load(text)


def test_environment_overrides_the_file() -> None:
    config = load("CC_PORT=8774\n", {"KOALA_CC_PORT": "9999", "KOALA_KOALA_ZONE": "ignored"})
    assert config.CC_PORT == 9999
    config = load("", {"KOALA_ZONE": "zone-b"})
    assert config.KOALA_ZONE == "zone-b"
    with pytest.raises(ConfigError, match="environment KOALA_CC_PORT: CC_PORT"):
        load("", {"KOALA_CC_PORT": "0"})


def test_service_exits_nonzero_with_a_clear_message(tmp_path: Path) -> None:
    conf = tmp_path / "cc.conf"
    conf.write_text(BASE + "CC_PORT=8774\nNO_SUCH_KEY=1\n")
    result = subprocess.run(
        [sys.executable, "-m", "cli", "cc", "--config", str(conf)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert f"{conf}:7: unknown key NO_SUCH_KEY" in result.stderr
    assert "Traceback" not in result.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "cli", "cc", "--config", str(tmp_path / "none.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_service_without_certificate_exits_cleanly(tmp_path: Path) -> None:
    conf = tmp_path / "cc.conf"
    conf.write_text(BASE.replace("/tmp/p", str(tmp_path)))
    result = subprocess.run(
        [sys.executable, "-m", "cli", "cc", "--config", str(conf)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "cannot load certificate" in result.stderr and "Traceback" not in result.stderr
