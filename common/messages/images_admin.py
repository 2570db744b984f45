"""The CLC's image administration (role admin): make any image public (every account may launch it) or private
(its owner and the accounts it was shared with), as an Eucalyptus admin did for the images installed for users."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SetImagePublicRequest(BaseModel):
    image_id: str = Field(max_length=32)
    public: bool


class ImageVisibilityResponse(BaseModel):
    image_id: str
    owner_id: str
    public: bool
