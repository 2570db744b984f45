"""The CLC's VM type administration (role admin): list, set (add or change), delete, reset to the defaults.

The rules (names, positive sizes, component-wise order) are enforced by the CLC; a refused change answers
400 InvalidParameterValue with the reason.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from common.messages.cc_nc import VmType


class VmTypesResponse(BaseModel):
    vm_types: list[VmType]  # in order, smallest first


class SetVmTypeRequest(BaseModel):
    name: str = Field(max_length=64)
    cores: int
    memory_mb: int
    disk_gb: int


class DeleteVmTypeRequest(BaseModel):
    name: str = Field(max_length=64)
