"""The EC2 Query endpoint: read (bounded), authenticate, parse against the model, dispatch, serialize.

Served at `/services/Eucalyptus`, `/services/compute` and `/` (GET with a query string, or POST with a form
body). Every failure is EC2 error XML with the right status; an unexpected exception is logged and answered
InternalError, never a stack trace.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from aiohttp import web

from common.bodies import BodyTooLarge, read_bounded
from services.cloud_controller.actions import ACTIONS, Context
from services.cloud_controller.ec2 import model, params, xml
from services.cloud_controller.ec2.auth import Lookup, SignedRequest, authenticate
from services.cloud_controller.ec2.errors import Ec2Error, as_ec2_error

if TYPE_CHECKING:
    from services.cloud_controller.service import CloudControllerService

log = logging.getLogger("koala.clc.ec2")

PATHS = ("/", "/services/Eucalyptus", "/services/Eucalyptus/", "/services/compute", "/services/compute/")
MAX_BODY = 512 * 1024  # RunInstances' user data (16 KiB, base64) and key material fit many times over
MAX_QUERY = 64 * 1024
_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class Frontend:
    def __init__(self, clc: CloudControllerService, lookup: Lookup, clock: Callable[[], float] = time.time):
        self.clc, self.lookup = clc, lookup
        self.clock = clock  # the time request signatures are checked against (a replay fixes it)

    def install(self, app: web.Application) -> None:
        for path in PATHS:
            app.router.add_route("GET", path, self.handle)
            app.router.add_route("POST", path, self.handle)
            app.router.add_route("*", path, self.other_method)

    async def other_method(self, request: web.Request) -> web.Response:
        body = xml.error(
            "UnsupportedOperation", f"{request.method[:16]} is not supported; use GET or POST", str(uuid.uuid4())
        )
        return web.Response(
            status=405, body=body, content_type="text/xml", charset="utf-8", headers={"Allow": "GET, POST"}
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started, started_cpu = time.perf_counter(), time.thread_time()
        request_id = str(uuid.uuid4())
        version = model.API_VERSION
        action = "?"
        try:
            body = await _read_body(request)
            values = _parameters(request, body)
            action = "".join(c for c in values.get("Action", "")[:64] if c.isalnum()) or "?"  # safe to log
            version = values.get("Version") or model.API_VERSION
            if not _VERSION.match(version):
                version = model.API_VERSION
                raise Ec2Error("InvalidParameterValue", "Version must look like 2016-11-15")
            signed = SignedRequest(
                method=request.method,
                host=request.headers.get("Host", request.host),
                path=request.path,
                raw_query=request.query_string,
                headers=request.headers,
                body=body,
                params=values,
            )
            access_key, principal = await authenticate(signed, self.lookup, self.clock())
            if "Action" not in values:
                raise Ec2Error("MissingAction", "The request must contain the parameter Action")
            entry = ACTIONS.get(values["Action"])
            operation = model.operation(values["Action"])
            if entry is None or operation is None:
                raise Ec2Error("InvalidAction", f"The action {action} is not valid for this web service.")
            parsed = params.parse(operation.input_shape, values)
            if parsed.get("DryRun"):
                raise Ec2Error("DryRunOperation", "Request would have succeeded, but DryRun flag is set.", 412)
            context = Context(
                clc=self.clc,
                principal=principal,
                request_id=request_id,
                version=version,
                access_key_id=access_key,
                remote=request.remote or "",
                host=signed.host,
            )
            result = await entry.handler(context, parsed)
            chunks = xml.response_chunks(operation, result, request_id, version)
            # The CLC's own time for the request (W3C Server-Timing), apart from the network and the client's, and
            # the CPU time its thread had meanwhile: far less when other work or other processes had the CPU.
            took, cpu = time.perf_counter() - started, time.thread_time() - started_cpu
            timing = {"Server-Timing": f"clc;dur={took * 1000:.1f}, cpu;dur={cpu * 1000:.1f}"}
            if len(chunks) == 1:
                return web.Response(body=chunks[0], content_type="text/xml", charset="utf-8", headers=timing)
            return await _send_chunks(request, chunks, timing)
        except ConnectionError:
            raise  # the client went away mid-request: nobody to answer; the listener logs it in one line
        except Exception as err:
            ec2 = as_ec2_error(err)
            if ec2 is None:
                log.exception("request %s: %s failed", request_id, action)
                ec2 = Ec2Error("InternalError", "An internal error has occurred; see the CLC log.", 500)
            elif ec2.status >= 500 or ec2.code in ("AuthFailure", "SignatureDoesNotMatch"):
                log.info("request %s: %s from %s refused: %s", request_id, action, request.remote, ec2.code)
            return web.Response(
                status=ec2.status,
                body=xml.error(ec2.code, ec2.message, request_id),
                content_type="text/xml",
                charset="utf-8",
            )


async def _send_chunks(request: web.Request, chunks: list[bytes], headers: dict[str, str]) -> web.StreamResponse:
    """A big answer sent as the pieces it was made in (its length said first), never joined into one buffer."""
    response = web.StreamResponse(headers=headers)
    response.content_type, response.charset = "text/xml", "utf-8"
    response.content_length = sum(len(chunk) for chunk in chunks)
    await response.prepare(request)
    for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


async def _read_body(request: web.Request) -> bytes:
    if request.method != "POST":
        return b""
    try:
        return await read_bounded(request, MAX_BODY)
    except BodyTooLarge:
        raise Ec2Error("RequestEntityTooLarge", f"The request body is limited to {MAX_BODY} bytes", 413) from None


def _parameters(request: web.Request, body: bytes) -> dict[str, str]:
    """Query string and form body, decoded; the form wins over the query for the same name."""
    if len(request.query_string) > MAX_QUERY:
        raise Ec2Error("InvalidParameterValue", f"The query string is limited to {MAX_QUERY} bytes", 414)
    values: dict[str, str] = {}
    try:
        for source in (request.query_string, body.decode("utf-8") if body else ""):
            if source:
                for key, value in parse_qsl(
                    source, keep_blank_values=True, max_num_fields=params.MAX_PARAMS, encoding="utf-8", errors="strict"
                ):
                    values[key] = value
    except UnicodeDecodeError:
        raise Ec2Error("InvalidParameterValue", "Parameters must be UTF-8 text") from None
    except ValueError:
        raise Ec2Error("InvalidParameterValue", f"too many parameters (the limit is {params.MAX_PARAMS})") from None
    return values
