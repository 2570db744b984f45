"""`koala vm-types [list | set NAME CORES MEMORY_MB DISK_GB | delete NAME | reset]`: the CLC's VM types.

Talks to the CLC named in DIR/endpoints.json with the `koala-admin` certificate (signed internal RPC).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from pydantic import BaseModel

from cli.allinone import AllInOne, default_state_dir
from common.messages.vmtypes import DeleteVmTypeRequest, SetVmTypeRequest, VmTypesResponse
from common.rpc import Empty, PeerUnreachable, RpcError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("vm-types", help="list or change the VM types (cores, memory, disk)")
    parser.add_argument("--state-dir", type=Path, default=default_state_dir(), help="the cloud's state directory")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    commands = parser.add_subparsers(dest="vm_command", metavar="ACTION")
    commands.add_parser("list", help="list the VM types (the default)")
    change = commands.add_parser("set", help="add a VM type or change its numbers")
    change.add_argument("name")
    change.add_argument("cores", type=int)
    change.add_argument("memory_mb", type=int)
    change.add_argument("disk_gb", type=int)
    delete = commands.add_parser("delete", help="delete a VM type")
    delete.add_argument("name")
    commands.add_parser("reset", help="back to the defaults (m1.small ... c1.xlarge)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    command = args.vm_command or "list"
    call: tuple[str, BaseModel]
    if command == "set":
        call = (
            "SetVmType",
            SetVmTypeRequest(name=args.name, cores=args.cores, memory_mb=args.memory_mb, disk_gb=args.disk_gb),
        )
    elif command == "delete":
        call = ("DeleteVmType", DeleteVmTypeRequest(name=args.name))
    elif command == "reset":
        call = ("ResetVmTypes", Empty())
    else:
        call = ("DescribeVmTypes", Empty())
    cloud = AllInOne(args.state_dir)

    async def invoke() -> VmTypesResponse:
        client = cloud.admin_client()
        try:
            return await client.call(cloud.endpoints()["clc"].url, call[0], call[1], VmTypesResponse, expect_role="clc")
        finally:
            await client.close()

    try:
        answer = asyncio.run(invoke())
    except (RpcError, PeerUnreachable) as err:
        print(f"koala vm-types: {err.code}: {err.message}", file=sys.stderr)
        return 1
    except (OSError, KeyError, ValueError) as err:
        print(f"koala vm-types: cannot reach the cloud in {args.state_dir}: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([vm.model_dump() for vm in answer.vm_types], indent=2))
    else:
        print(f"{'name':<12} {'cores':>5} {'memory MiB':>10} {'disk GiB':>8}")
        for vm in answer.vm_types:
            print(f"{vm.name:<12} {vm.cores:>5} {vm.memory_mb:>10} {vm.disk_gb:>8}")
    return 0
