"""`koala admin set-password LOGIN`: set (or create) an admin web login's password in the CLC's state directory.

Runs on the CLC's host, on a running or stopped CLC (the running CLC re-reads the file at the next sign-in). The
password comes from the terminal (asked twice) or, with --password-stdin, from the first line of standard input.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from common.config import ConfigError
from services.cloud_controller.admin.passwords import LoginFile, PasswordError
from services.cloud_controller.config import CloudControllerConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("login", help="the admin web login (e.g. admin)")
    parser.add_argument("--config", type=Path, help="the CLC's configuration file (default STATE_DIR/conf/clc.conf)")
    parser.add_argument("--password-stdin", action="store_true", help="read the password from standard input")


def run(args: argparse.Namespace) -> int:
    conf = args.config or Path(args.state_dir) / "conf" / "clc.conf"
    try:
        state_dir = CloudControllerConfig.load(conf).KOALA_STATE_DIR
    except ConfigError as err:
        print(f"koala admin set-password: {err}", file=sys.stderr)
        return 2
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"New password for {args.login}: ")
        if password != getpass.getpass("Again: "):
            print("koala admin set-password: the passwords differ", file=sys.stderr)
            return 2
    try:
        LoginFile(state_dir).set(args.login, password)
    except (PasswordError, OSError) as err:
        print(f"koala admin set-password: {err}", file=sys.stderr)
        return 2
    print(f"password of admin web login {args.login} set in {state_dir}")
    return 0
