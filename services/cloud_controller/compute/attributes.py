"""Instance attributes users change (ModifyInstanceAttribute, ResetInstanceAttribute), the password a guest
posts on its console (GetPasswordData) and product codes (ConfirmProductInstance), on top of the engine.

EC2's rules: disableApiTermination and instanceInitiatedShutdownBehavior change at any time of a live instance;
instanceType, userData, kernel and ramdisk only while it is stopped (IncorrectInstanceState otherwise), and take
effect at its next start. Only an EBS-backed instance can stop, so `stop` as shutdown behaviour is refused for
instance-store roots.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from typing import TYPE_CHECKING, Any

from services.cloud_controller.compute.errors import ComputeError, check_id, invalid
from services.cloud_controller.compute.store import Instance

if TYPE_CHECKING:
    from services.cloud_controller.compute.engine import Compute, Principal

STOPPED_ONLY = ("instanceType", "userData", "kernel", "ramdisk")
RESETTABLE = ("disableApiTermination", "instanceInitiatedShutdownBehavior", "kernel", "ramdisk")
SHUTDOWN_BEHAVIORS = ("stop", "terminate")
PRODUCT_CODE = re.compile(r"^[A-Za-z0-9]{1,64}$")
# Windows guests (EC2Config) write their encrypted administrator password to the console between these tags.
_PASSWORD = re.compile(rb"<Password>\s*([A-Za-z0-9+/=\r\n]{1,4096}?)\s*</Password>")


def product_codes(compute: Compute, instance: Instance) -> list[str]:
    image = compute.store.images.get(instance.image_id)
    return sorted(image.product_codes) if image else []


def check_product_code(code: str) -> str:
    if not isinstance(code, str) or not PRODUCT_CODE.match(code):
        raise invalid("ProductCode", f"'{str(code)[:64]}' is not a product code (1-64 letters and digits)")
    return code


class Attributes:
    def __init__(self, compute: Compute):
        self.compute = compute

    def _modifiable(self, instance_id: str, principal: Principal) -> Instance:
        instance = self.compute.instance(instance_id, principal)
        if instance.state in ("shutting-down", "terminated"):
            raise ComputeError("IncorrectInstanceState", f"The instance '{instance.instance_id}' is {instance.state}.")
        return instance

    @staticmethod
    def _stopped(instance: Instance, attribute: str) -> None:
        if instance.state != "stopped":
            raise ComputeError(
                "IncorrectInstanceState",
                f"The instance '{instance.instance_id}' is not in the 'stopped' state: {attribute} changes only "
                "while it is stopped.",
            )

    async def modify(self, principal: Principal, instance_id: str, attribute: str, value: Any) -> Instance:
        instance = self._modifiable(instance_id, principal)
        if attribute == "disableApiTermination":
            instance.disable_api_termination = bool(value)
        elif attribute == "instanceInitiatedShutdownBehavior":
            self._set_shutdown_behavior(instance, value)
        elif attribute in STOPPED_ONLY:
            self._stopped(instance, attribute)
            self._set_launch_attribute(principal, instance, attribute, value)
        else:
            raise ComputeError(
                "InvalidParameterValue", f"The attribute '{str(attribute)[:40]}' cannot be modified in EC2-Classic."
            )
        await self._save(instance)
        return instance

    async def reset(self, principal: Principal, instance_id: str, attribute: str) -> Instance:
        instance = self._modifiable(instance_id, principal)
        if attribute == "disableApiTermination":
            instance.disable_api_termination = False
        elif attribute == "instanceInitiatedShutdownBehavior":
            instance.shutdown_behavior = "terminate"
        elif attribute in ("kernel", "ramdisk"):
            self._stopped(instance, attribute)
            image = self.compute.store.images.get(instance.image_id)
            settings = self.compute.settings
            if attribute == "kernel":
                instance.kernel_id = (image.kernel_id if image else "") or settings.default_kernel
            else:
                instance.ramdisk_id = (image.ramdisk_id if image else "") or settings.default_ramdisk
        else:
            raise ComputeError(
                "InvalidParameterValue",
                f"The attribute '{str(attribute)[:40]}' cannot be reset; use one of {', '.join(RESETTABLE)}.",
            )
        await self._save(instance)
        return instance

    def _set_shutdown_behavior(self, instance: Instance, value: Any) -> None:
        if value not in SHUTDOWN_BEHAVIORS:
            raise invalid("InstanceInitiatedShutdownBehavior", f"'{str(value)[:32]}' is not stop or terminate")
        if value == "stop" and instance.root_device_type != "ebs":
            raise ComputeError(
                "UnsupportedOperation",
                f"The instance '{instance.instance_id}' does not have an 'ebs' root device type and cannot be stopped.",
            )
        instance.shutdown_behavior = value

    def _set_launch_attribute(self, principal: Principal, instance: Instance, attribute: str, value: Any) -> None:
        compute = self.compute
        if attribute == "instanceType":
            vm = compute.vm_type(str(value or ""))
            instance.vm_type, instance.cores, instance.memory_mb, instance.disk_gb = (
                vm.name,
                vm.cores,
                vm.memory_mb,
                vm.disk_gb,
            )
        elif attribute == "userData":
            from services.cloud_controller.compute.launch import decode_user_data

            raw = value if isinstance(value, bytes) else str(value or "").encode()
            instance.user_data = decode_user_data(base64.b64encode(raw).decode()) if raw else ""
        elif attribute == "kernel":
            instance.kernel_id = compute.image(value, principal, "kernel").image_id if value else ""
        elif attribute == "ramdisk":
            instance.ramdisk_id = compute.image(value, principal, "ramdisk").image_id if value else ""

    async def _save(self, instance: Instance) -> None:
        instance.updated_at = time.time()  # also refreshes the instance's cached DescribeInstances XML
        await self.compute.store.save_instances([instance])

    # --- GetPasswordData ------------------------------------------------------------------------------------
    async def password_data(self, principal: Principal, instance_id: str) -> tuple[Instance, str]:
        """The encrypted password the guest wrote to its console, or "" (Linux guests never write one)."""
        instance, output = await self.compute.console_output(principal, instance_id)
        try:
            text = base64.b64decode(output or "", validate=False)
        except (binascii.Error, ValueError):
            text = b""
        found = _PASSWORD.findall(text)
        return instance, found[-1].decode().replace("\r", "").replace("\n", "") if found else ""

    # --- ConfirmProductInstance -----------------------------------------------------------------------------
    def confirm_product(self, principal: Principal, instance_id: str, code: str) -> str | None:
        """The instance owner's account if the instance runs an image with `code` and the caller owns the code
        (has it on an image of its own); None otherwise. An instance the caller can see neither as its own nor as
        the code's owner is NotFound, so the call reveals nothing of other accounts."""
        check_product_code(code)
        instance = self.compute.store.instances.get(check_id(instance_id, "i"))
        owns_code = any(
            image.owner_id == principal.account_id and code in image.product_codes
            for image in self.compute.store.images.values()
        )
        if instance is None or not (owns_code or self.compute.visible(instance, principal)):
            raise ComputeError("InvalidInstanceID.NotFound", f"The instance ID '{instance_id[:64]}' does not exist")
        if owns_code and instance.live and code in product_codes(self.compute, instance):
            return instance.owner_id
        return None
