"""An asyncio EC2 client for the remote cloud: botocore's model serializes and parses, botocore's SigV4 signer
signs, aiohttp sends. No boto3 client in a thread: every call is a coroutine with its own timeout, so a remote
that hangs holds up only the task that called it.

Errors come in two kinds, because the CC acts differently on them: `RemoteRefused` (the remote answered with an
EC2 error: the request was wrong or not allowed, sending it again will not help) and `RemoteUnavailable` (no
answer, a timeout, a 5xx: the outcome is unknown, try again later with the same ClientToken).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import botocore.session
from botocore import parsers, serialize
from botocore.auth import SigV4Auth
from botocore.awsrequest import create_request_object, prepare_request_dict
from botocore.credentials import Credentials
from botocore.exceptions import ParamValidationError
from botocore.model import ServiceModel
from botocore.validate import validate_parameters

from services.cluster_controller.remote.credentials import RemoteCredentials

log = logging.getLogger("koala.cc.remote")
MAX_ANSWER = 16 << 20  # a DescribeInstances of thousands of instances, not more
AUTH_CODES = frozenset(
    {"AuthFailure", "SignatureDoesNotMatch", "InvalidClientTokenId", "UnrecognizedClientException", "OptInRequired"}
)


class RemoteError(Exception):
    def __init__(self, code: str, message: str, status: int = 0):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = code, message, status


class RemoteRefused(RemoteError):
    """The remote answered the request with an EC2 error (4xx)."""

    @property
    def credentials(self) -> bool:
        return self.code in AUTH_CODES


class RemoteUnavailable(RemoteError):
    """No usable answer: unreachable, timed out, or a server error. The request may or may not have acted."""


def load_model() -> ServiceModel:
    """botocore's EC2 model (reads a few MB of JSON: call it in a thread)."""
    return botocore.session.get_session().get_service_model("ec2")


class Ec2Client:
    def __init__(
        self,
        endpoint: str,
        region: str,
        credentials: RemoteCredentials,
        model: ServiceModel,
        timeout: float,
        concurrency: int,
    ):
        self.endpoint, self.timeout = endpoint, timeout
        self.model = model
        self._serializer = serialize.create_serializer("ec2")
        self._parser = parsers.create_parser("ec2")
        self._signer = SigV4Auth(Credentials(credentials.access_key, credentials.secret_key), "ec2", region)
        self._gate = asyncio.Semaphore(concurrency)
        self._session: aiohttp.ClientSession | None = None
        self.calls = 0  # sent, for logs and tests

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, operation: str, params: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """One EC2 action; its parsed answer (boto3's shape, without ResponseMetadata)."""
        model = self.model.operation_model(operation)
        try:
            validate_parameters(params, model.input_shape)
        except ParamValidationError as err:
            raise RemoteRefused("InvalidParameter", str(err)) from None
        request = self._serializer.serialize_to_request(params, model)
        prepare_request_dict(request, self.endpoint)
        prepared_request = create_request_object(request)
        self._signer.add_auth(prepared_request)  # the secret stays in the signer: nothing here is logged
        prepared = prepared_request.prepare()
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        limit = aiohttp.ClientTimeout(total=timeout or self.timeout)
        async with self._gate:
            self.calls += 1
            try:
                async with self._session.request(
                    prepared.method, prepared.url, headers=dict(prepared.headers), data=prepared.body, timeout=limit
                ) as response:
                    body = await response.content.read(MAX_ANSWER + 1)
                    status, headers = response.status, dict(response.headers)
            except (TimeoutError, aiohttp.ClientError, OSError) as err:
                raise RemoteUnavailable(
                    "Unreachable", f"{operation} to {self.endpoint}: {type(err).__name__} {err}".strip()
                ) from None
        if len(body) > MAX_ANSWER:
            raise RemoteUnavailable("AnswerTooLarge", f"{operation}: the answer is over {MAX_ANSWER} bytes")
        try:
            parsed: dict[str, Any] = self._parser.parse(
                {"status_code": status, "headers": headers, "body": body}, model.output_shape
            )
        except Exception as err:  # botocore raises several kinds on a body that is not EC2 XML
            raise RemoteUnavailable("BadAnswer", f"{operation}: HTTP {status}, not an EC2 answer ({err})") from None
        if status >= 300 or "Error" in parsed:
            error = parsed.get("Error") or {}
            code = error.get("Code") or f"HTTP{status}"
            message = error.get("Message") or ""
            if status >= 500 or status in (408, 429) or code in ("RequestLimitExceeded", "Unavailable"):
                raise RemoteUnavailable(code, message or f"{operation}: HTTP {status}", status)
            raise RemoteRefused(code, message, status)
        parsed.pop("ResponseMetadata", None)
        return parsed

    async def pages(self, operation: str, params: dict[str, Any], key: str) -> list[dict[str, Any]]:
        """Every item of a paged Describe (NextToken), in order."""
        items: list[dict[str, Any]] = []
        token = None
        for _ in range(1000):
            answer = await self.call(operation, {**params, **({"NextToken": token} if token else {})})
            items.extend(answer.get(key) or [])
            token = answer.get("NextToken")
            if not token:
                return items
        raise RemoteUnavailable("TooManyPages", f"{operation}: more than 1000 pages")
