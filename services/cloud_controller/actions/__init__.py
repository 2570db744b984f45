"""The EC2 action registry.

How to add an action
--------------------
1. Put it in a module of this package (any `actions/<name>.py` not starting with `_`; every module here is
   imported at start by `load_all()`, so no list needs editing).
2. Decorate an async function with `@action("ActionName")`, the name exactly as EC2 (and botocore's model
   `botocore/data/ec2/2016-11-15/service-2.json`) spells it:

       from services.cloud_controller.actions import Context, action
       from services.cloud_controller.ec2.errors import Ec2Error, invalid, missing

       @action("DescribeKeyPairs")
       async def describe_key_pairs(ctx: Context, params: dict) -> dict:
           rows = await ctx.compute.key_pairs.of_account(ctx.owner_id)
           return {"KeyPairs": [{"KeyName": r["name"], "KeyFingerprint": r["fingerprint"]} for r in rows]}

3. `params` is the request parsed against the operation's botocore INPUT shape: member names as boto3 uses
   them (`params["IpPermissions"][0]["IpRanges"][0]["CidrIp"]`, `params["Filters"]` = [{"Name", "Values"}]),
   integers/booleans/timestamps converted, blobs decoded to bytes. Required members are already checked
   (MissingParameter); everything else is the action's to validate.
4. Return a dict shaped like the operation's OUTPUT shape, with boto3's member names (what
   `boto3.client("ec2").describe_key_pairs()` returns, minus ResponseMetadata). Timestamps may be epoch floats
   or datetimes; `None` values are left out. The XML (element names, `item` lists, the client's Version
   namespace) is produced from the model, so do not build XML by hand.
5. Errors: raise `Ec2Error(code, message, status=400)` (see `ec2/errors.py`: `missing()`, `invalid()`).
   Any exception with str `code`, str `message` and int `status` (4xx/5xx) is answered the same way (so
   `compute.errors.ComputeError` works as is); anything else is logged and answered InternalError (500).
   `DryRun=true` is answered DryRunOperation before the action runs.

What `ctx` (Context) gives an action
------------------------------------
- `ctx.principal`: the authenticated `common.messages.identity.Principal` (account_id is EC2's owner id;
  resources belong to the ACCOUNT: `ctx.owner_id` == `ctx.principal.account_id`; is_admin for the cloud admin).
- `ctx.clc`: the CloudControllerService and its parts, typed (`.compute`, `.ebs`, `.leases`, `.identity_store`,
  `.config`, `.client` for RPC); `ctx.compute` is `ctx.clc.compute`. `ctx.request_id`, `ctx.version` (the
  client's API Version), `ctx.remote` (client address), `ctx.host` (Host header, for URLs in answers).

What actions share: the compute layer's stores beside instances (`ctx.compute`: `.tags` the tag store and the
registry of taggable resource types, `.security_groups` groups and rules, `resolve()` for a launch, `.key_pairs`),
the tag parameters (`actions.tags.tag_specifications`, `check_tags`), the launch check (`actions.launch`),
`ec2.filters.Filters`. Actions parse and shape; SQL lives in the layer below (the stores and engines own their
tables and transactions).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from common.messages.identity import Principal
from services.cloud_controller.ec2 import model

if TYPE_CHECKING:
    from services.cloud_controller.compute.engine import Compute
    from services.cloud_controller.service import CloudControllerService


@dataclass
class Context:
    clc: CloudControllerService
    principal: Principal
    request_id: str
    version: str
    access_key_id: str = ""
    remote: str = ""
    host: str = ""

    @property
    def compute(self) -> Compute:
        """The compute engine: instances, images, addresses, and the tag, security group and key pair stores."""
        return self.clc.compute

    @property
    def owner_id(self) -> str:
        return self.principal.account_id


Handler = Callable[[Context, dict[str, Any]], Awaitable[dict[str, Any] | None]]


@dataclass(frozen=True)
class Action:
    name: str
    handler: Handler


ACTIONS: dict[str, Action] = {}


def action(name: str) -> Callable[[Handler], Handler]:
    """Register `handler` for the EC2 action `name` (which must exist in botocore's EC2 model)."""

    def register(handler: Handler) -> Handler:
        if model.operation(name) is None:
            raise ValueError(f"{name} is not an EC2 action in botocore's model")
        if name in ACTIONS and ACTIONS[name].handler is not handler:
            raise ValueError(f"action {name} registered twice")
        ACTIONS[name] = Action(name, handler)
        return handler

    return register


def load_all() -> dict[str, Action]:
    """Import every action module of this package (which registers its actions)."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    return ACTIONS
