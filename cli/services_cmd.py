"""`koala clc|cc|nc|walrus --config FILE`: run one service in the foreground; `koala nc-fleet`: many simulated
node controllers in one process (services/node_controller/fleet.py)."""

from __future__ import annotations

import argparse
import importlib

# role -> "module:class"; imported only when that service is run.
SERVICES = {
    "clc": "services.cloud_controller.service:CloudControllerService",
    "cc": "services.cluster_controller.service:ClusterControllerService",
    "nc": "services.node_controller.service:NodeControllerService",
    "walrus": "services.walrus.service:WalrusService",
}
TITLES = {"clc": "Cloud Controller", "cc": "Cluster Controller", "nc": "Node Controller", "walrus": "Walrus"}


def service_class(role: str) -> type:
    module, _, name = SERVICES[role].partition(":")
    return getattr(importlib.import_module(module), name)


def register(subparsers: argparse._SubParsersAction) -> None:
    for role, title in TITLES.items():
        parser = subparsers.add_parser(role, help=f"run the {title} in the foreground")
        parser.add_argument("--config", required=True, help="configuration file (eucalyptus.conf style)")
        parser.set_defaults(func=_run, role=role)
    fleet = subparsers.add_parser("nc-fleet", help="run many simulated node controllers in one process")
    fleet.add_argument("--config", action="append", default=[], help="one node's configuration (repeatable)")
    fleet.add_argument("--config-dir", help="run every *.conf file of this directory as one node")
    fleet.add_argument("--log-level", default="INFO", help="the fleet's log level (one log for every node)")
    fleet.set_defaults(func=_run_fleet)


def _run(args: argparse.Namespace) -> int:
    from common.service import run

    return run(service_class(args.role), args.config)


def _run_fleet(args: argparse.Namespace) -> int:
    from pathlib import Path

    from services.node_controller import fleet

    paths = [Path(p) for p in args.config]
    if args.config_dir:
        paths += sorted(Path(args.config_dir).glob("*.conf"))
    return fleet.run(paths, args.log_level)
