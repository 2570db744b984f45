"""What one S3 request carries through the handlers: who asks, for what, and how its body is signed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web
from multidict import MultiDict

if TYPE_CHECKING:
    from services.walrus.s3.app import S3App


@dataclass(frozen=True)
class Requester:
    """The caller: an account, anonymous (account_id ""), or the cloud itself (aws-exec-read readers)."""

    account_id: str = ""
    account_name: str = ""
    is_cloud: bool = False
    access_key: str = ""
    user_name: str = ""

    @property
    def authenticated(self) -> bool:
        return bool(self.account_id) or self.is_cloud


ANONYMOUS = Requester()


@dataclass
class ChunkSigning:
    """What signed aws-chunked bodies are verified with (SigV4 seed signature and key)."""

    key: bytes
    scope: str
    amz_date: str
    seed_signature: str


@dataclass
class Ctx:
    app: S3App
    request: web.Request
    request_id: str
    bucket: str
    key: str
    query: MultiDict[str]
    raw_path: str = "/"  # as sent, still percent-encoded (signatures are computed over it)
    raw_query: str = ""
    requester: Requester = ANONYMOUS
    payload: str = "UNSIGNED-PAYLOAD"  # x-amz-content-sha256: a hex digest or one of the streaming modes
    signing: ChunkSigning | None = None
    response_headers: dict[str, str] = field(default_factory=dict)

    @property
    def headers(self):
        return self.request.headers

    @property
    def resource(self) -> str:
        if not self.bucket:
            return "/"
        return f"/{self.bucket}/{self.key}" if self.key else f"/{self.bucket}"
