"""The CLC's lease administration over signed RPC (role admin): SuspendInstance and ResumeInstance
(`koala admin suspend|resume INSTANCE`): libvirt save of a guest on its node, and restore."""

from __future__ import annotations

from pydantic import BaseModel, Field


class InstanceRef(BaseModel):
    instance_id: str = Field(min_length=1, max_length=32)


class InstanceStateResponse(BaseModel):
    instance_id: str
    state: str  # the EC2 state after the action: stopped (suspended) or running
