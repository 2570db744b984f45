"""Messages every service answers: DescribeService (the walking skeleton's signed call)."""

from __future__ import annotations

from pydantic import BaseModel


class PeerStatus(BaseModel):
    url: str
    role: str
    id: str | None = None
    reachable: bool = False
    last_error: str | None = None
    last_seen: float | None = None


class DescribeServiceResponse(BaseModel):
    id: str
    role: str
    version: str
    uptime: float
    peers: list[PeerStatus] = []
