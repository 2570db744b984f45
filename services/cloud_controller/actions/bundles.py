"""BundleInstance, DescribeBundleTasks, CancelBundleTask (EC2-Classic; Eucalyptus 2.0 had them).

The upload policy is checked here (form, expiry, bucket, prefix, and its signature with the secret of the
access key, which must be one of the caller's account) so bad input is EC2's error at once; the work is
compute/bundle_tasks.py's, on the instance's node.
"""

from __future__ import annotations

import time
from typing import Any

from common import ids
from common.bundle import upload_policy
from services.cloud_controller.actions import Context, action
from services.cloud_controller.compute.bundle_tasks import BundleTask, BundleTasks
from services.cloud_controller.ec2.errors import Ec2Error, missing
from services.cloud_controller.ec2.filters import Filters

MAX_BUNDLE_IDS = 1000
FILTERS = {
    "bundle-id",
    "error-code",
    "error-message",
    "instance-id",
    "progress",
    "s3-bucket",
    "s3-prefix",
    "state",
}


def tasks(ctx: Context) -> BundleTasks:
    return ctx.clc.bundle_tasks


def task_dict(task: BundleTask) -> dict[str, Any]:
    out: dict[str, Any] = {
        "BundleId": task.bundle_id,
        "InstanceId": task.instance_id,
        "State": task.state,
        "StartTime": task.start_time,
        "UpdateTime": task.update_time,
        "Progress": f"{task.progress}%",
        "Storage": {"S3": {"Bucket": task.storage["bucket"], "Prefix": task.storage["prefix"]}},
    }
    if task.error_code:
        out["BundleTaskError"] = {"Code": task.error_code, "Message": task.error_message}
    return out


@action("BundleInstance")
async def bundle_instance(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    instance = ctx.clc.compute.instance(params["InstanceId"], ctx.principal)
    s3 = (params.get("Storage") or {}).get("S3")
    if not isinstance(s3, dict):
        raise missing("Storage.S3.Bucket")
    try:
        policy = upload_policy.check(s3, time.time())
    except upload_policy.PolicyError as err:
        if err.message.endswith("is required"):
            raise missing(err.message.split()[0]) from None
        raise Ec2Error("InvalidParameterValue", err.message) from None
    credential = await ctx.clc.identity_store.lookup(policy.access_key_id)
    if credential is None or not credential.enabled or credential.principal.account_id != ctx.owner_id:
        raise Ec2Error(
            "InvalidParameterValue", f"Storage.S3.AWSAccessKeyId {policy.access_key_id} is not a key of yours"
        )
    if not upload_policy.signature_matches(policy, credential.secret):
        raise Ec2Error(
            "InvalidParameterValue",
            "Storage.S3.UploadPolicySignature is not the signature of the upload policy with that access key's secret",
        )
    if instance.state != "running":
        raise Ec2Error(
            "IncorrectInstanceState", f"The instance '{instance.instance_id}' is not in the 'running' state."
        )
    manager = tasks(ctx)
    busy = manager.active_for(instance.instance_id)
    if busy is not None:
        raise Ec2Error("BundlingInProgress", f"The instance is already being bundled ({busy.bundle_id})")
    task = await manager.create(ctx.owner_id, instance.instance_id, instance.zone, policy)
    return {"BundleTask": task_dict(task)}


@action("DescribeBundleTasks")
async def describe_bundle_tasks(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    wanted = [str(b) for b in params.get("BundleIds") or []]
    if len(wanted) > MAX_BUNDLE_IDS:
        raise Ec2Error("InvalidParameterValue", f"At most {MAX_BUNDLE_IDS} bundle ids per request")
    filters = Filters.parse(params.get("Filters"), allowed=FILTERS, tags=False)
    manager = tasks(ctx)
    if wanted:
        chosen = [manager.get(_bundle_id(b), ctx.owner_id) for b in wanted]
    else:
        chosen = sorted(manager.visible(ctx.owner_id), key=lambda t: t.start_time)
    out = []
    for task in chosen:
        values = {
            "bundle-id": task.bundle_id,
            "error-code": task.error_code,
            "error-message": task.error_message,
            "instance-id": task.instance_id,
            "progress": f"{task.progress}%",
            "s3-bucket": task.storage["bucket"],
            "s3-prefix": task.storage["prefix"],
            "state": task.state,
        }
        if filters.match_all(values):
            out.append(task_dict(task))
    return {"BundleTasks": out}


@action("CancelBundleTask")
async def cancel_bundle_task(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    manager = tasks(ctx)
    task = await manager.cancel(manager.get(_bundle_id(params["BundleId"]), ctx.owner_id))
    return {"BundleTask": task_dict(task)}


def _bundle_id(value: str) -> str:
    if not ids.is_id(value, "bun"):
        raise Ec2Error("InvalidBundleID.Malformed", f'Invalid id: "{value[:64]}"')
    return ids.normalize(value)
