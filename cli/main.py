"""`koala`: one command-line tool for running services, the PKI, the all-in-one cloud and user tools.

Each subcommand lives in its own module with `register(subparsers)`; add a module to COMMAND_MODULES.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "cli.services_cmd",
    "cli.pki_cmd",
    "cli.allinone",
    "cli.admin_cmd",
    "cli.bundle_cmd",
    "cli.install_cmd",
    "cli.vmtypes_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="koala", description="Koala, a private IaaS cloud.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
