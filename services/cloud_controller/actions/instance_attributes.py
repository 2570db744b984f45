"""ModifyInstanceAttribute, ResetInstanceAttribute, GetPasswordData and ConfirmProductInstance: EC2-Classic
actions on one instance. The rules are `compute.attributes.Attributes`; this module reads EC2's two request
forms (`Attribute=...&Value=...` as old tools send it, or one structured member such as
`DisableApiTermination.Value=true`) and shapes the answers."""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

from services.cloud_controller.actions import Context, action
from services.cloud_controller.compute.attributes import Attributes
from services.cloud_controller.ec2.errors import Ec2Error, invalid, missing

# Structured members of ModifyInstanceAttribute -> the attribute name EC2 gives them.
MEMBERS = {
    "DisableApiTermination": "disableApiTermination",
    "InstanceInitiatedShutdownBehavior": "instanceInitiatedShutdownBehavior",
    "InstanceType": "instanceType",
    "Kernel": "kernel",
    "Ramdisk": "ramdisk",
    "UserData": "userData",
}
# Members and attribute names EC2 has only for VPC or newer hardware; EC2-Classic has nothing to change there.
NOT_IN_CLASSIC = {
    "SourceDestCheck": "sourceDestCheck",
    "Groups": "groupSet",
    "EbsOptimized": "ebsOptimized",
    "SriovNetSupport": "sriovNetSupport",
    "EnaSupport": "enaSupport",
    "EnclaveOptions": "enclaveOptions",
    "DisableApiStop": "disableApiStop",
    "BlockDeviceMappings": "blockDeviceMapping",
}
ATTRIBUTES = set(MEMBERS.values()) | set(NOT_IN_CLASSIC.values()) | {"rootDeviceName", "productCodes"}
MAX_VALUE = 64 * 1024  # userData as base64 text in the Attribute/Value form


def attributes(ctx: Context) -> Attributes:
    return Attributes(ctx.clc.compute)


def _boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "false"):
        return text == "true"
    raise invalid(name, value, "true or false is expected.")


def _requested(params: dict[str, Any]) -> tuple[str, Any]:
    """(attribute, value) of the one change a request asks for."""
    given = [member for member in (*MEMBERS, *NOT_IN_CLASSIC) if params.get(member) not in (None, {}, [])]
    if params.get("Attribute"):
        given.append("Attribute")
    if not given:
        raise missing("Attribute")
    if len(given) > 1:
        raise Ec2Error(
            "InvalidParameterCombination", f"Only one attribute can be modified at a time, not {', '.join(given)}"
        )
    member = given[0]
    if member in NOT_IN_CLASSIC:
        raise _not_in_classic(NOT_IN_CLASSIC[member])
    if member == "Attribute":
        attribute = params["Attribute"]
        if attribute not in ATTRIBUTES:
            raise invalid("Attribute", attribute, f"Use one of {', '.join(sorted(MEMBERS.values()))}.")
        if attribute not in MEMBERS.values():
            raise _not_in_classic(attribute)
        if params.get("Value") is None:
            raise missing("Value")
        value: Any = params["Value"]
        if len(value) > MAX_VALUE:
            raise invalid("Value", f"{len(value)} characters", f"At most {MAX_VALUE}.")
        if attribute == "userData":
            try:
                value = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise invalid("Value", value, "userData is base64.") from None
    else:
        attribute = MEMBERS[member]
        if "Value" not in params[member]:
            raise missing(f"{member}.Value")
        value = params[member]["Value"]
    if attribute == "disableApiTermination":
        value = _boolean("DisableApiTermination", value)
    return attribute, value


def _not_in_classic(attribute: str) -> Ec2Error:
    return Ec2Error("InvalidParameterValue", f"The attribute '{attribute}' cannot be modified in EC2-Classic.")


@action("ModifyInstanceAttribute")
async def modify_instance_attribute(ctx: Context, params: dict[str, Any]) -> None:
    attribute, value = _requested(params)
    await attributes(ctx).modify(ctx.principal, params["InstanceId"], attribute, value)
    return None


@action("ResetInstanceAttribute")
async def reset_instance_attribute(ctx: Context, params: dict[str, Any]) -> None:
    attribute = params["Attribute"]
    if attribute not in ATTRIBUTES:
        raise invalid("Attribute", attribute, "Not an instance attribute.")
    await attributes(ctx).reset(ctx.principal, params["InstanceId"], attribute)
    return None


@action("GetPasswordData")
async def get_password_data(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    instance, password = await attributes(ctx).password_data(ctx.principal, params["InstanceId"])
    # Always the element, empty until a guest posts one (EC2 answers Linux guests so).
    return {"InstanceId": instance.instance_id, "Timestamp": time.time(), "PasswordData": password}


@action("ConfirmProductInstance")
async def confirm_product_instance(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    owner = attributes(ctx).confirm_product(ctx.principal, params["InstanceId"], params["ProductCode"])
    return {"Return": owner is not None, "OwnerId": owner}
