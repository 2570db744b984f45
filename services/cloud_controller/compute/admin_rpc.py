"""VM type and image administration over signed RPC (role admin): DescribeVmTypes, SetVmType, DeleteVmType,
ResetVmTypes (the admin pages and `koala vm-types`; the rules live in compute/vmtypes.py) and SetImagePublic
(`koala admin image-public|image-private`)."""

from __future__ import annotations

from typing import Any

from common.messages.images_admin import ImageVisibilityResponse, SetImagePublicRequest
from common.messages.vmtypes import DeleteVmTypeRequest, SetVmTypeRequest, VmTypesResponse
from common.rpc import Caller, Empty, RpcError, RpcServer
from services.cloud_controller.compute.errors import ComputeError
from services.cloud_controller.compute.images import Images
from services.cloud_controller.compute.vmtypes import VmTypes

ROLES = frozenset({"admin"})


def install(rpc: RpcServer, vmtypes: VmTypes, images: Images | None = None) -> None:
    def answer() -> VmTypesResponse:
        return VmTypesResponse(vm_types=vmtypes.list())

    async def describe(_: Empty, caller: Caller) -> VmTypesResponse:
        return answer()

    async def set_type(message: SetVmTypeRequest, caller: Caller) -> VmTypesResponse:
        try:
            await vmtypes.set(message.name, message.cores, message.memory_mb, message.disk_gb)
        except ComputeError as err:
            raise RpcError(400, err.code, err.message) from None
        return answer()

    async def delete(message: DeleteVmTypeRequest, caller: Caller) -> VmTypesResponse:
        try:
            await vmtypes.delete(message.name)
        except ComputeError as err:
            raise RpcError(400, err.code, err.message) from None
        return answer()

    async def reset(_: Empty, caller: Caller) -> VmTypesResponse:
        await vmtypes.reset()
        return answer()

    async def set_image_public(message: SetImagePublicRequest, caller: Caller) -> ImageVisibilityResponse:
        if images is None:
            raise RpcError(503, "NotReady", "the image registry is not set up")
        try:
            image = images.get(message.image_id)
            everyone: list[dict[str, Any]] = [{"Group": "all"}]
            add, remove = (everyone, []) if message.public else ([], everyone)
            await images.modify_launch_permission(image, add, remove)
        except ComputeError as err:
            raise RpcError(404 if err.code.endswith("NotFound") else 400, err.code, err.message) from None
        return ImageVisibilityResponse(image_id=image.image_id, owner_id=image.owner_id, public=image.is_public)

    rpc.add("SetImagePublic", set_image_public, ROLES, SetImagePublicRequest)
    rpc.add("DescribeVmTypes", describe, ROLES, Empty)
    rpc.add("SetVmType", set_type, ROLES, SetVmTypeRequest)
    rpc.add("DeleteVmType", delete, ROLES, DeleteVmTypeRequest)
    rpc.add("ResetVmTypes", reset, ROLES, Empty)
