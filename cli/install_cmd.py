"""`koala install`: put systemd units, configuration templates and the service user in place for roles.

Units come from deploy/systemd/ with the paths of this installation filled in; configuration templates are
written only where no configuration exists yet (an admin's edits are never overwritten).
"""

from __future__ import annotations

import argparse
import grp
import pwd
import subprocess
import sys
from pathlib import Path

from common.config import render_conf

ROLES = ("clc", "walrus", "cc", "nc")
UNPRIVILEGED = {"clc", "walrus"}  # run as the `koala` user; the CC and NC need root for network and libvirt
UNIT_DIR = Path(__file__).resolve().parent.parent / "deploy" / "systemd"

TEMPLATES: dict[str, dict[str, object]] = {
    "clc": {
        "KOALA_SERVICE_ID": "clc",
        "KOALA_CLC_PORT": 8773,
        "KOALA_BIND": "0.0.0.0",
        "KOALA_WALRUS_URL": "http://WALRUS-HOST:8776",
        "KOALA_CLUSTERS": "zone1=http://CC-HOST:8774",
    },
    "walrus": {
        "KOALA_SERVICE_ID": "walrus",
        "KOALA_WALRUS_PORT": 8776,
        "KOALA_BIND": "0.0.0.0",
        "KOALA_CLC_URL": "http://CLC-HOST:8773",
    },
    "cc": {
        "KOALA_SERVICE_ID": "cc-zone1",
        "CC_PORT": 8774,
        "KOALA_BIND": "0.0.0.0",
        "KOALA_ZONE": "zone1",
        "NODES": "NODE-HOST",
        "KOALA_CLC_URL": "http://CLC-HOST:8773",
    },
    "nc": {
        "KOALA_SERVICE_ID": "nc-HOSTNAME",
        "NC_PORT": 8775,
        "KOALA_BIND": "0.0.0.0",
        "KOALA_CC_URL": "http://CC-HOST:8774",
    },
}


def koala_executable() -> Path:
    return Path(sys.executable).parent / "koala"


def render_unit(role: str, config_dir: Path, state_dir: Path, koala_bin: Path) -> str:
    text = (UNIT_DIR / f"koala-{role}.service").read_text()
    for marker, value in (("@KOALA_BIN@", koala_bin), ("@CONFIG_DIR@", config_dir), ("@STATE_DIR@", state_dir)):
        text = text.replace(marker, str(value))
    return text


def install(
    roles: list[str], root: Path, config_dir: Path, state_dir: Path, unit_dir: Path, create_user: bool
) -> list[Path]:
    """Install units and configuration templates under `root`; return the files written."""
    written = []
    (root / unit_dir.relative_to("/")).mkdir(parents=True, exist_ok=True)
    (root / config_dir.relative_to("/")).mkdir(parents=True, exist_ok=True)
    if create_user and UNPRIVILEGED & set(roles):
        ensure_user("koala")
    for role in roles:
        unit = root / unit_dir.relative_to("/") / f"koala-{role}.service"
        unit.write_text(render_unit(role, config_dir, state_dir, koala_executable()))
        written.append(unit)
        conf = root / config_dir.relative_to("/") / f"{role}.conf"
        if not conf.exists():
            values = {**TEMPLATES[role], "KOALA_STATE_DIR": state_dir / role, "KOALA_PKI_DIR": config_dir / "pki"}
            conf.write_text(
                render_conf(
                    values, f"Koala {role}: replace the *-HOST placeholders, then\nsystemctl enable --now koala-" + role
                )
            )
            written.append(conf)
        (root / state_dir.relative_to("/") / role).mkdir(parents=True, exist_ok=True)
    return written


def ensure_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
        return
    except KeyError:
        pass
    try:
        grp.getgrnam(name)
        group_args = ["-g", name]
    except KeyError:
        group_args = ["-U"]
    subprocess.run(
        ["useradd", "--system", *group_args, "-d", "/var/lib/koala", "-s", "/usr/sbin/nologin", name], check=True
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("install", help="install systemd units, configuration and users for roles")
    parser.add_argument(
        "--role",
        action="append",
        choices=[*ROLES, "all"],
        required=True,
        help="role to install on this host (repeatable; `all` for every role)",
    )
    parser.add_argument("--root", type=Path, default=Path("/"), help="install under this root (for packaging)")
    parser.add_argument("--config-dir", type=Path, default=Path("/etc/koala"))
    parser.add_argument("--state-dir", type=Path, default=Path("/var/lib/koala"))
    parser.add_argument("--unit-dir", type=Path, default=Path("/etc/systemd/system"))
    parser.add_argument("--no-user", action="store_true", help="do not create the koala system user")
    parser.set_defaults(func=_install)


def _install(args: argparse.Namespace) -> int:
    roles = list(ROLES) if "all" in args.role else list(dict.fromkeys(args.role))
    for path in (args.config_dir, args.state_dir, args.unit_dir):
        if not path.is_absolute():
            print(f"koala install: {path} must be an absolute path", file=sys.stderr)
            return 2
    written = install(
        roles,
        args.root,
        args.config_dir,
        args.state_dir,
        args.unit_dir,
        create_user=not args.no_user and args.root == Path("/"),
    )
    for path in written:
        print(f"wrote {path}")
    units = " ".join(f"koala-{r}" for r in roles)
    print(
        f"next: `koala pki init --dir {args.config_dir}/pki` on the CLC host, `koala pki issue` per component,"
        f" then\n`systemctl daemon-reload && systemctl enable --now {units}`"
    )
    return 0
