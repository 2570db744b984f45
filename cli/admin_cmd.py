"""`koala admin ...`: manage accounts, users and access keys on the CLC, fetch a user's credentials zip, make an
image public or private.

Talks to the CLC named in DIR/endpoints.json with the `koala-admin` certificate (signed internal RPC).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from cli.allinone import AllInOne, default_state_dir
from common import pki
from common.messages import identity_admin as msg
from common.messages import images_admin, leases_admin, storage
from common.rpc import Empty, PeerUnreachable, RpcError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("admin", help="manage accounts, users, access keys and credentials")
    parser.add_argument("--state-dir", type=Path, default=default_state_dir(), help="the cloud's state directory")
    commands = parser.add_subparsers(dest="admin_command", metavar="ACTION", required=True)

    def add(name: str, text: str, *args: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text)
        for arg in args:
            sub.add_argument(arg)
        sub.set_defaults(func=_run, action_name=name)
        return sub

    add("accounts", "list accounts, users and access keys (never secrets)")
    add("create-account", "create an account with its admin user and an access key", "name")
    add("create-user", "create a user in an account", "account", "user")
    add("create-key", "create an access key for a user", "account", "user")
    add("disable-key", "disable an access key", "access_key_id")
    add("enable-key", "enable an access key", "access_key_id")
    add("delete-key", "delete an access key", "access_key_id")
    add("disable-user", "disable a user", "account", "user")
    add("enable-user", "enable a user", "account", "user")
    add("image-public", "let every account launch an image (LaunchPermission group all)", "image_id")
    add("image-private", "only the image's owner (and accounts it was shared with) may launch it", "image_id")
    add("volumes", "list every account's EBS volumes and snapshots, and each zone's storage (free / capacity)")
    add("suspend", "suspend an instance to disk on its node (libvirt save); it shows as stopped", "instance_id")
    add("resume", "resume a suspended instance where it was, on its node", "instance_id")
    creds = add("credentials", "write a user's credentials zip (eucarc, certificate, keys)", "account", "user")
    creds.add_argument("-o", "--output", type=Path, help="zip file to write (default ACCOUNT-USER.zip)")
    from services.cloud_controller.admin import setpassword  # local: the admin web pages' logins

    password = commands.add_parser("set-password", help="set an admin web page login's password (on the CLC host)")
    setpassword.add_arguments(password)
    password.set_defaults(func=setpassword.run)
    from cli import admin_hosts  # cluster and node registration, keys over SSH

    admin_hosts.add_commands(commands)
    from cli import admin_migrate  # live migration and node maintenance, asked of the zone's CC

    admin_migrate.add_commands(commands, admin_hosts.run)


def _call(args: argparse.Namespace) -> tuple[str, BaseModel | None, type[BaseModel]]:
    name = args.action_name
    if name == "accounts":
        return "ListAccounts", Empty(), msg.ListAccountsResponse
    if name == "create-account":
        return "CreateAccount", msg.CreateAccountRequest(name=args.name), msg.NewAccessKey
    if name == "create-user":
        return "CreateUser", msg.CreateUserRequest(account=args.account, name=args.user), msg.UserResponse
    if name == "create-key":
        return "CreateAccessKey", msg.UserRef(account=args.account, user=args.user), msg.NewAccessKey
    if name in ("disable-key", "enable-key"):
        enable_key = msg.SetAccessKeyEnabledRequest(access_key_id=args.access_key_id, enabled=name == "enable-key")
        return "SetAccessKeyEnabled", enable_key, msg.Done
    if name == "delete-key":
        return "DeleteAccessKey", msg.AccessKeyRef(access_key_id=args.access_key_id), msg.Done
    if name in ("disable-user", "enable-user"):
        enable_user = msg.SetUserEnabledRequest(account=args.account, user=args.user, enabled=name == "enable-user")
        return "SetUserEnabled", enable_user, msg.Done
    if name in ("image-public", "image-private"):
        visibility = images_admin.SetImagePublicRequest(image_id=args.image_id, public=name == "image-public")
        return "SetImagePublic", visibility, images_admin.ImageVisibilityResponse
    if name == "volumes":
        return "ListVolumes", Empty(), storage.ListVolumesResponse
    if name in ("suspend", "resume"):
        ref = leases_admin.InstanceRef(instance_id=args.instance_id)
        return name.capitalize() + "Instance", ref, leases_admin.InstanceStateResponse
    return "GetCredentials", msg.UserRef(account=args.account, user=args.user), msg.CredentialsResponse


async def _invoke(cloud: AllInOne, operation: str, message: BaseModel | None, answer: type[BaseModel]) -> Any:
    client = cloud.admin_client()
    try:
        return await client.call(cloud.endpoints()["clc"].url, operation, message, answer, expect_role="clc")
    finally:
        await client.close()


def _run(args: argparse.Namespace) -> int:
    cloud = AllInOne(args.state_dir)
    if not cloud.endpoints_path.exists():
        print(f"koala admin: no cloud in {cloud.dir}", file=sys.stderr)
        return 3
    try:
        operation, message, answer_type = _call(args)
        answer = asyncio.run(_invoke(cloud, operation, message, answer_type))
    except (RpcError, PeerUnreachable) as err:
        print(f"koala admin: {err.code}: {err.message}", file=sys.stderr)
        return 1
    except ValueError as err:  # pydantic validation of names
        print(f"koala admin: {err}", file=sys.stderr)
        return 2
    if isinstance(answer, msg.CredentialsResponse):
        target = args.output or Path(f"{args.account}-{args.user}.zip")
        pki.write_private(target, base64.b64decode(answer.zip_base64))
        print(f"wrote {target}")
    elif isinstance(answer, msg.ListAccountsResponse):
        for account in answer.accounts:
            marker = "\tadmin" if account.is_admin else ""
            print(f"ACCOUNT\t{account.name}\t{account.account_id}{marker}")
            for user in account.users:
                state = "enabled" if user.principal.enabled else "disabled"
                print(f"USER\t{account.name}\t{user.principal.user_name}\t{user.principal.user_id}\t{state}")
                for key in user.access_keys:
                    print(f"KEY\t{user.principal.user_name}\t{key.access_key_id}\t{'on' if key.enabled else 'off'}")
    elif isinstance(answer, storage.ListVolumesResponse):
        for zone in answer.zones:
            free = max(zone.capacity_gb - zone.allocated_gb, 0)
            print(f"ZONE\t{zone.zone}\t{free} GiB free of {zone.capacity_gb} GiB")
        for v in answer.volumes:
            attached = f"\t{v.instance_id} {v.device} {v.attach_state}" if v.attach_state else ""
            print(
                f"VOLUME\t{v.volume_id}\t{v.owner_id}\t{v.zone}\t{v.size_gb} GiB\t{v.state}\t{v.snapshot_id}{attached}"
            )
        for s in answer.snapshots:
            shared = ",".join((["all"] if s.public else []) + s.shared_with)
            print(f"SNAPSHOT\t{s.snapshot_id}\t{s.owner_id}\t{s.volume_id}\t{s.volume_size} GiB\t{s.state}"
                  f"\t{s.progress}%\t{shared}")  # fmt: skip
    else:
        print(json.dumps(answer.model_dump(), indent=2))
    return 0
