"""`koala clc|cc|nc|walrus --config FILE`: run one service in the foreground."""

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


def _run(args: argparse.Namespace) -> int:
    from common.service import run

    return run(service_class(args.role), args.config)
