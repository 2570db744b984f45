"""`koala admin migrate INSTANCE [--to NODE]`, `koala admin evacuate NODE`, `koala admin restore NODE`,
`koala admin migrations`: live migration and node maintenance (issue 21), asked of the CC of the instance's or the
node's zone (found through the CLC's cluster list) with the `koala-admin` certificate. `--wait` follows the
migrations until they settle, printing their progress."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel

from common.messages import clc_cc
from common.messages import clusters as msg
from common.messages.migration import (
    DescribeMigrationsRequest,
    DescribeMigrationsResponse,
    MigrateInstancesRequest,
    MigrateInstancesResponse,
    MigrationInfo,
    NodeMaintenance,
    NodeRequest,
)
from common.rpc import Empty, RpcError

if TYPE_CHECKING:
    from cli.admin_hosts import Context

WAIT_LIMIT = 3600.0
M = TypeVar("M", bound=BaseModel)
Action = Callable[["Context", argparse.Namespace], Awaitable[int]]


def add_commands(commands: argparse._SubParsersAction, run: Callable[[argparse.Namespace], int]) -> None:
    def add(name: str, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--cluster", help="the zone (default: the one that has the instance or node)")
        sub.set_defaults(func=run, hosts_action=ACTIONS[name])
        return sub

    migrate = add("migrate", "live-migrate an instance to another node of its zone")
    migrate.add_argument("instance_id")
    migrate.add_argument("--to", dest="target", default="", help="the target node (id or URL); default: the policy's")
    migrate.add_argument("--wait", action="store_true", help="follow the migration until it settles")
    migrate.add_argument(
        "--cold", action="store_true", help="the fallback: the guest paused for the whole copy (stop, move, start)"
    )
    evacuate = add("evacuate", "maintenance: stop placing on a node and live-migrate every instance off it")
    evacuate.add_argument("node", help="node id (nc-...) or URL")
    evacuate.add_argument("--wait", action="store_true", help="follow the migrations until the node is empty")
    restore = add("restore", "end a node's maintenance: instances may be placed there again")
    restore.add_argument("node", help="node id (nc-...) or URL")
    add("migrations", "list the migrations of each zone, with their progress")


class AdminError(Exception):
    pass


async def _clusters(ctx: Context, args: argparse.Namespace) -> list[str]:
    clusters = (await ctx.clc("DescribeClusters", Empty(), msg.DescribeClustersResponse)).clusters
    if args.cluster:
        clusters = [c for c in clusters if c.zone == args.cluster]
        if not clusters:
            raise AdminError(f"no cluster {args.cluster}")
    return [c.url for c in clusters]


async def _cc(ctx: Context, url: str, op: str, body: BaseModel | None, model: type[M]) -> M:
    return await ctx.client.call(url, op, body, model, expect_role="cc", timeout=30)


async def _cc_of_instance(ctx: Context, args: argparse.Namespace, instance_id: str) -> str:
    for url in await _clusters(ctx, args):
        try:
            request = clc_cc.InstanceIdsRequest(instance_ids=[instance_id])
            answer = await _cc(ctx, url, "DescribeInstances", request, clc_cc.DescribeInstancesResponse)
        except RpcError:
            continue
        if any(i.instance_id == instance_id.lower() and i.state != "Teardown" for i in answer.instances):
            return url
    raise AdminError(f"no zone runs {instance_id}")


async def _cc_of_node(ctx: Context, args: argparse.Namespace, node: str) -> str:
    for url in await _clusters(ctx, args):
        try:
            answer = await _cc(ctx, url, "DescribeNodes", None, clc_cc.DescribeNodesResponse)
        except RpcError:
            continue
        if any(node in (n.node_id, n.url) for n in answer.nodes):
            return url
    raise AdminError(f"no zone has a node {node!r}")


def _line(info: MigrationInfo) -> str:
    error = f"\t{info.error}" if info.error else ""
    return (f"MIGRATION\t{info.instance_id}\t{info.source_node} -> {info.target_node}\t{info.state}"
            f"\t{info.progress}%{error}")  # fmt: skip


async def _follow(ctx: Context, url: str, ids: list[str]) -> int:
    """Print each change of the migrations' state or progress until all have settled; 1 if one failed."""
    seen: dict[str, str] = {}
    deadline = time.monotonic() + WAIT_LIMIT
    while time.monotonic() < deadline:
        answer = await _cc(ctx, url, "DescribeMigrations", DescribeMigrationsRequest(instance_ids=ids),
                           DescribeMigrationsResponse)  # fmt: skip
        for info in answer.migrations:
            line = _line(info)
            if seen.get(info.instance_id) != line:
                seen[info.instance_id] = line
                print(line, flush=True)
        if answer.migrations and all(m.state in ("done", "failed") for m in answer.migrations):
            return 1 if any(m.state == "failed" for m in answer.migrations) else 0
        await asyncio.sleep(0.5)
    raise AdminError("the migrations did not settle in time")


async def _migrate(ctx: Context, args: argparse.Namespace) -> int:
    url = await _cc_of_instance(ctx, args, args.instance_id)
    request = MigrateInstancesRequest(
        instance_ids=[args.instance_id], target_node=args.target, mode="cold" if args.cold else "live"
    )
    answer = await _cc(ctx, url, "MigrateInstances", request, MigrateInstancesResponse)
    for instance_id, error in answer.errors.items():
        print(f"koala admin: {instance_id}: {error}", file=sys.stderr)
    for info in answer.migrations:
        print(_line(info))
    if answer.errors:
        return 1
    return await _follow(ctx, url, [args.instance_id]) if args.wait else 0


def _maintenance(answer: NodeMaintenance) -> None:
    print(f"NODE\t{answer.node}\t{answer.state}")
    for info in answer.migrations:
        print(_line(info))
    for instance_id, error in answer.errors.items():
        print(f"koala admin: {instance_id}: {error}", file=sys.stderr)


async def _evacuate(ctx: Context, args: argparse.Namespace) -> int:
    url = await _cc_of_node(ctx, args, args.node)
    answer = await _cc(ctx, url, "EvacuateNode", NodeRequest(node=args.node), NodeMaintenance)
    _maintenance(answer)
    if not args.wait:
        return 1 if answer.errors else 0
    failed = await _follow(ctx, url, [m.instance_id for m in answer.migrations]) if answer.migrations else 0
    final = await _cc(ctx, url, "DescribeNodeMaintenance", NodeRequest(node=args.node), NodeMaintenance)
    print(f"NODE\t{final.node}\t{final.state}")
    return 1 if failed or answer.errors or final.state != "evacuated" else 0


async def _restore(ctx: Context, args: argparse.Namespace) -> int:
    url = await _cc_of_node(ctx, args, args.node)
    _maintenance(await _cc(ctx, url, "RestoreNode", NodeRequest(node=args.node), NodeMaintenance))
    return 0


async def _list(ctx: Context, args: argparse.Namespace) -> int:
    for url in await _clusters(ctx, args):
        listing = await _cc(ctx, url, "DescribeMigrations", DescribeMigrationsRequest(), DescribeMigrationsResponse)
        for info in listing.migrations:
            print(_line(info))
    return 0


async def _guarded(action: Action, ctx: Context, args: argparse.Namespace) -> int:
    try:
        return await action(ctx, args)
    except AdminError as err:
        print(f"koala admin: {err}", file=sys.stderr)
        return 1


def _guard(action: Action) -> Action:
    return lambda ctx, args: _guarded(action, ctx, args)


ACTIONS: dict[str, Action] = {
    "migrate": _guard(_migrate),
    "evacuate": _guard(_evacuate),
    "restore": _guard(_restore),
    "migrations": _guard(_list),
}
