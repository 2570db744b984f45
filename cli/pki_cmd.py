"""`koala pki init|issue|show`: the cloud CA, the cloud key pair and component certificates."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import pki


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("pki", help="manage the cloud's certificates")
    actions = parser.add_subparsers(dest="pki_command", metavar="ACTION", required=True)

    init = actions.add_parser("init", help="create the cloud CA and the cloud key pair")
    init.add_argument("--dir", required=True, type=Path, help="PKI directory to create")
    init.set_defaults(func=_init)

    issue = actions.add_parser("issue", help="issue a component certificate")
    issue.add_argument("--dir", required=True, type=Path, help="PKI directory holding the CA")
    issue.add_argument("--role", required=True, choices=sorted(pki.COMPONENT_ROLES | {"user"}))
    issue.add_argument("--id", required=True, help="component id, e.g. cc-zone1 or nc-host1")
    issue.add_argument("--key-type", choices=["ec", "rsa"], help="default: ec for components, rsa for users")
    issue.set_defaults(func=_issue)

    show = actions.add_parser("show", help="show a certificate (or every certificate in a PKI directory)")
    show.add_argument("path", type=Path, help="certificate file or PKI directory")
    show.set_defaults(func=_show)


def _init(args: argparse.Namespace) -> int:
    try:
        pki.PkiDir(args.dir).init()
    except pki.PkiError as err:
        print(f"koala pki init: {err}", file=sys.stderr)
        return 1
    print(f"created the cloud CA and the cloud key pair in {args.dir}")
    return 0


def _issue(args: argparse.Namespace) -> int:
    directory = pki.PkiDir(args.dir)
    if not directory.exists():
        print(f"koala pki issue: no CA in {args.dir}; run `koala pki init --dir {args.dir}` first", file=sys.stderr)
        return 1
    try:
        path = directory.issue(args.id, args.role, args.key_type)
    except pki.PkiError as err:
        print(f"koala pki issue: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _show(args: argparse.Namespace) -> int:
    paths = (
        sorted(p for p in args.path.glob("*.pem") if not p.name.endswith("key.pem") and p.name != "cloud-pk.pem")
        if args.path.is_dir()
        else [args.path]
    )
    try:
        details = [dict(file=str(p), **pki.describe(pki.load_cert(p))) for p in paths]
    except pki.PkiError as err:
        print(f"koala pki show: {err}", file=sys.stderr)
        return 1
    print(json.dumps(details if args.path.is_dir() else details[0], indent=2))
    return 0
