"""What one S3 request carries through the handlers: who asks, for what, and how its body is signed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import CIMultiDictProxy, MultiDictProxy

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
    user_id: str = ""

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
    query: MultiDictProxy[str]
    raw_path: str = "/"  # as sent, still percent-encoded (signatures are computed over it)
    raw_query: str = ""
    requester: Requester = ANONYMOUS
    payload: str = "UNSIGNED-PAYLOAD"  # x-amz-content-sha256: a hex digest or one of the streaming modes
    signing: ChunkSigning | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    # How the request was authenticated, for policy conditions (s3:authType, s3:signatureversion, ...).
    auth_type: str = ""  # "REST-HEADER", "REST-QUERY-STRING", "POST" or "" (anonymous)
    signature_version: str = ""  # "AWS" (SigV2) or "AWS4-HMAC-SHA256"
    signed_at: float = 0.0
    bucket_owner: str = ""  # the bucket's owner once known (access logs)
    error_code: str = ""  # the S3 error answered, if any (access logs)
    operation: str = ""  # the S3 operation's name, once routed (routes.py)
    form_tags: dict[str, str] | None = None  # the tags a browser POST upload's form asks for

    def request_tags(self) -> dict[str, str] | None:
        """The tags an upload asks for in x-amz-tagging (URL-encoded), or None without the header."""
        if self.form_tags is not None:
            return self.form_tags
        value = self.request.headers.get("x-amz-tagging")
        if value is None:
            return None
        return dict(parse_qsl(value, keep_blank_values=True))

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self.request.headers

    @property
    def resource(self) -> str:
        if not self.bucket:
            return "/"
        return f"/{self.bucket}/{self.key}" if self.key else f"/{self.bucket}"
