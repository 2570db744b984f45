"""eucalyptus.conf-style configuration: `KEY="value"` lines parsed into a pydantic model per service.

The file uses shell syntax: `#` comments, single or double quotes, backslash line continuation (as in
VNET_MACMAP). Every key a service reads is a field of its model, documented with a description. A key the
service does not know is an error naming the file and line, except the stock Eucalyptus keys, which a host
file shared by several roles carries for the other services. `KOALA_<KEY>` environment variables override
the file (a key that already starts with `KOALA_` is overridden by the variable of the same name).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Keys of Eucalyptus's eucalyptus.conf. A service ignores the ones it does not use.
EUCALYPTUS_KEYS = frozenset(
    """EUCALYPTUS EUCA_USER CLOUD_OPTS CC_PORT SCHEDPOLICY POWER_IDLETHRESH POWER_WAKETHRESH NODES
    NC_POLLING_FREQUENCY CC_POLLING_FREQUENCY INSTANCE_TIMEOUT NC_PORT NC_SERVICE HYPERVISOR MAX_MEM MAX_CORES
    MAX_DISK SWAP_SIZE CONCURRENT_DISK_OPS MANUAL_INSTANCES_CLEANUP INSTANCE_PATH NC_CACHE_SIZE
    USE_VIRTIO_NET USE_VIRTIO_DISK USE_VIRTIO_ROOT VNET_PUBINTERFACE VNET_PRIVINTERFACE VNET_BRIDGE
    VNET_DHCPDAEMON VNET_DHCPUSER VNET_MODE VNET_SUBNET VNET_NETMASK VNET_DNS VNET_ADDRSPERNET
    VNET_PUBLICIPS VNET_CLOUDIP VNET_BROADCAST VNET_ROUTER VNET_MACMAP VNET_LOCALIP LOGLEVEL LOGROLLNUMBER
    DISABLE_DNS DISABLE_ISCSI CREDS_FILE""".split()
)


class ConfigError(Exception):
    """A configuration problem, with the place it was found."""


@dataclass(frozen=True)
class Setting:
    value: str
    source: str  # "file:line" or "environment KOALA_X"


def parse_conf(text: str, filename: str = "<config>") -> dict[str, Setting]:
    """Parse eucalyptus.conf-style text into {KEY: Setting}. Later assignments win, as in a shell."""
    settings: dict[str, Setting] = {}
    logical = ""
    start_line = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not logical:
            start_line = number
        stripped = raw.rstrip()
        if stripped.endswith("\\") and not stripped.endswith("\\\\"):
            logical += stripped[:-1]  # shell line continuation: backslash-newline vanishes
            continue
        logical += raw
        line, logical = logical, ""
        where = f"{filename}:{start_line}"
        try:
            tokens = shlex.split(line, comments=True, posix=True)
        except ValueError as err:
            raise ConfigError(f"{where}: cannot parse line ({err})") from None
        if not tokens:
            continue
        if tokens[0] == "export":
            tokens = tokens[1:]
        if len(tokens) != 1 or "=" not in tokens[0]:
            raise ConfigError(f'{where}: expected KEY="value", got {line.strip()!r}')
        key, value = tokens[0].split("=", 1)
        if not key.replace("_", "").isalnum() or not key[0].isalpha():
            raise ConfigError(f"{where}: invalid key name {key!r}")
        settings[key] = Setting(value, where)
    if logical:
        raise ConfigError(f"{filename}:{start_line}: line continuation at end of file")
    return settings


def env_name(key: str) -> str:
    return key if key.startswith("KOALA_") else f"KOALA_{key}"


class ServiceConfig(BaseModel):
    """Settings every service has. Field names are the keys as written in the file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    KOALA_SERVICE_ID: str = Field(description="This component's id, the CN of its certificate (e.g. cc-zone1).")
    KOALA_STATE_DIR: Path = Field(description="Directory for this service's database and data files.")
    KOALA_PKI_DIR: Path = Field(
        description="Directory with ca.pem, this service's <id>.pem and <id>-key.pem (and the cloud key pair "
        "for the CLC and Walrus)."
    )
    KOALA_BIND: str = Field("127.0.0.1", description="Address to listen on.")
    KOALA_LOG_LEVEL: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    KOALA_PEER_POLL_SECONDS: float = Field(10.0, gt=0, description="How often peers are checked when healthy.")
    KOALA_LOOP_STALL_MS: float = Field(
        0.0,
        ge=0,
        description="Log each time the event loop was held (or the process kept off a CPU) this many ms or more, "
        "and full garbage collections as long; 0: off.",
    )
    KOALA_HTTP_MAX_CONNECTIONS: int = Field(
        8192, gt=0, description="Open connections at most; more are answered 503 (kept below the descriptor limit)."
    )
    KOALA_HTTP_MAX_CONNECTIONS_PER_PEER: int = Field(
        1_000, gt=0, description="Open connections at most from one client address; more are answered 503."
    )
    KOALA_HTTP_IDLE_SECONDS: float = Field(
        30.0, gt=0, description="A connection with no request (new, or kept alive after one) is closed after this."
    )
    KOALA_HTTP_HEADER_SECONDS: float = Field(
        10.0, gt=0, description="A request's headers must be complete this long after its first byte."
    )
    KOALA_HTTP_BODY_IDLE_SECONDS: float = Field(
        30.0, gt=0, description="A request body that sends nothing for this long is dropped."
    )

    @property
    def port(self) -> int:  # each service names its own port key
        raise NotImplementedError

    @classmethod
    def keys(cls) -> set[str]:
        return set(cls.model_fields)

    @classmethod
    def from_settings(cls, settings: dict[str, Setting], environ: dict[str, str] | None = None) -> Self:
        env: Mapping[str, str] = os.environ if environ is None else environ
        known = cls.keys()
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for key, setting in settings.items():
            if key not in known:
                if key in EUCALYPTUS_KEYS:
                    continue
                raise ConfigError(f"{setting.source}: unknown key {key}")
            values[key], sources[key] = setting.value, setting.source
        for key in known:
            name = env_name(key)
            if name in env:
                values[key], sources[key] = env[name], f"environment {name}"
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            problems = []
            for error in err.errors():
                key = str(error["loc"][0]) if error["loc"] else "?"
                where = sources.get(key, "missing")
                problems.append(f"{where}: {key}: {error['msg']}")
            raise ConfigError("; ".join(problems)) from None

    @classmethod
    def load(cls, path: str | Path, environ: dict[str, str] | None = None) -> Self:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
        return cls.from_settings(parse_conf(text, str(path)), environ)


def render_conf(values: dict[str, object], header: str = "") -> str:
    """Write settings back in the file format (used by `koala up` and the installer)."""
    lines = [f"# {line}" for line in header.splitlines()]
    for key, value in values.items():
        lines.append(f"{key}={shlex.quote(str(value))}" if value != "" else f'{key}=""')
    return "\n".join(lines) + "\n"
