"""VM type administration over signed RPC (role admin): DescribeVmTypes, SetVmType, DeleteVmType, ResetVmTypes.
The admin pages and `koala vm-types` use these; the rules live in compute/vmtypes.py."""

from __future__ import annotations

from common.messages.vmtypes import DeleteVmTypeRequest, SetVmTypeRequest, VmTypesResponse
from common.rpc import Caller, Empty, RpcError, RpcServer
from services.cloud_controller.compute.errors import ComputeError
from services.cloud_controller.compute.vmtypes import VmTypes

ROLES = frozenset({"admin"})


def install(rpc: RpcServer, vmtypes: VmTypes) -> None:
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

    rpc.add("DescribeVmTypes", describe, ROLES, Empty)
    rpc.add("SetVmType", set_type, ROLES, SetVmTypeRequest)
    rpc.add("DeleteVmType", delete, ROLES, DeleteVmTypeRequest)
    rpc.add("ResetVmTypes", reset, ROLES, Empty)
