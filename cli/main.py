"""`koala`: one command-line tool for running services, the PKI, the all-in-one cloud and user tools.

Each subcommand lives in its own module with `register(subparsers)`; add its commands to COMMANDS. Only the
module of the command being run is imported (the others bring aiohttp, boto3, asyncssh...): `koala --help`
lists the commands from the table below, so it answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module that registers it, one-line help as `koala --help` shows it)
COMMANDS: dict[str, tuple[str, str]] = {
    "clc": ("cli.services_cmd", "run the Cloud Controller in the foreground"),
    "cc": ("cli.services_cmd", "run the Cluster Controller in the foreground"),
    "nc": ("cli.services_cmd", "run the Node Controller in the foreground"),
    "walrus": ("cli.services_cmd", "run the Walrus in the foreground"),
    "nc-fleet": ("cli.services_cmd", "run many simulated node controllers (test hypervisor) in one process"),
    "pki": ("cli.pki_cmd", "manage the cloud's certificates"),
    "up": ("cli.allinone", "bring up the whole cloud on this machine"),
    "down": ("cli.allinone", "stop the cloud that `koala up` started (guests keep running unless --purge)"),
    "status": ("cli.allinone", "say what runs and whether the services reach each other"),
    "admin": ("cli.admin_cmd", "manage accounts, users, access keys, credentials, images and hosts"),
    "bundle-image": ("cli.bundle_cmd", "bundle an image file (tar, gzip, encrypt, split, sign)"),
    "unbundle": ("cli.bundle_cmd", "check and decrypt a bundle back into its image"),
    "upload-bundle": ("cli.bundle_cmd", "upload a bundle to Walrus (S3)"),
    "delete-bundle": ("cli.bundle_cmd", "delete an uploaded bundle from Walrus (S3)"),
    "install": ("cli.install_cmd", "install systemd units, configuration and users for roles"),
    "vm-types": ("cli.vmtypes_cmd", "list or change the VM types (cores, memory, disk)"),
}
COMMAND_MODULES = list(dict.fromkeys(module for module, _ in COMMANDS.values()))


def _chosen(argv: list[str]) -> str | None:
    """The command named on the command line (the first word that is not an option), if any."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(argv: list[str] | None = None, full: bool = False) -> argparse.ArgumentParser:
    """The parser; `full` registers every module's commands (their own parsers), else only the chosen one's."""
    parser = argparse.ArgumentParser(prog="koala", description="Koala, a private IaaS cloud.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = _chosen(sys.argv[1:] if argv is None else argv)
    modules = COMMAND_MODULES if full else ([COMMANDS[chosen][0]] if chosen else [])
    for name in modules:
        importlib.import_module(name).register(subparsers)
    registered = set(subparsers.choices)
    for name, (_, text) in COMMANDS.items():
        if name not in registered:  # listed for --help; a command is registered before it runs
            subparsers.add_parser(name, help=text)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
