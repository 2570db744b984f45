"""Request bodies, streamed: plain (Content-Length), and aws-chunked with signed chunks or an unsigned trailer.

The reader yields decoded bytes and checks what it can on the way: sizes against the limit and the declared
length, each signed chunk's signature, the x-amz-content-sha256 digest; trailing checksums are collected in
`trailers` for the caller to compare once the data is complete.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator

from aiohttp import web

from services.walrus.s3 import auth
from services.walrus.s3.context import Ctx
from services.walrus.s3.errors import S3Error

READ_SIZE = 1 << 18
MAX_CHUNK_HEADER = 4096
MAX_TRAILER_LINES = 16


class Body:
    def __init__(self, ctx: Ctx, max_size: int, check_sha256: bool = True):
        self.ctx = ctx
        self.request: web.Request = ctx.request
        self.max_size = max_size
        self.trailers: dict[str, str] = {}
        self.mode = ctx.payload
        headers = ctx.headers
        self.chunked = self.mode in auth.STREAMING_MODES
        if self.chunked:
            declared = headers.get("x-amz-decoded-content-length")
            if declared is None:
                raise S3Error("MissingContentLength", "x-amz-decoded-content-length is required with aws-chunked")
        else:
            declared = headers.get("Content-Length")
            if declared is None and "chunked" not in headers.get("Transfer-Encoding", "").lower():
                raise S3Error("MissingContentLength")
        try:
            self.length: int | None = int(declared) if declared is not None else None
        except ValueError:
            raise S3Error(
                "InvalidArgument", "the content length is not a number", ArgumentName="Content-Length"
            ) from None
        if self.length is not None and self.length < 0:
            raise S3Error("InvalidArgument", "negative content length", ArgumentName="Content-Length")
        if self.length is not None and self.length > max_size:
            raise S3Error("EntityTooLarge", ProposedSize=self.length, MaxSizeAllowed=max_size)
        # The caller may check x-amz-content-sha256 itself (off the event loop, with its other digests).
        self._sha256 = hashlib.sha256() if check_sha256 and self.hex_payload() else None

    def hex_payload(self) -> bool:
        return len(self.mode) == 64 and not self.chunked

    async def whole(self, limit: int) -> bytes | None:
        """The body in one read when it is plain, of a declared length of at most `limit` and with no digest of its
        own to check (small uploads: two async generators fewer per request); None otherwise (read `chunks`)."""
        if self.chunked or self.length is None or self.length > limit or self._sha256 is not None:
            return None
        if not self.length:  # aiohttp's reader of an empty body refuses even readexactly(0)
            return b""
        try:
            return await self.request.content.readexactly(self.length)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            raise S3Error("IncompleteBody") from None
        except Exception as err:  # aiohttp's payload errors (the connection lost)
            raise S3Error("IncompleteBody", f"the body could not be read ({type(err).__name__})") from None

    async def chunks(self) -> AsyncIterator[bytes]:
        source = self._chunked() if self.chunked else self._plain()
        total = 0
        async for data in source:
            total += len(data)
            if total > self.max_size:
                raise S3Error("EntityTooLarge", MaxSizeAllowed=self.max_size)
            if self.length is not None and total > self.length:
                raise S3Error("IncompleteBody", "the body is longer than its declared length")
            if self._sha256 is not None:
                self._sha256.update(data)
            yield data
        if self.length is not None and total != self.length:
            raise S3Error("IncompleteBody")
        if self._sha256 is not None and not hmac.compare_digest(self._sha256.hexdigest(), self.mode.lower()):
            raise S3Error(
                "XAmzContentSHA256Mismatch",
                ClientComputedContentSHA256=self.mode,
                S3ComputedContentSHA256=self._sha256.hexdigest(),
            )

    async def _plain(self) -> AsyncIterator[bytes]:
        content = self.request.content
        while True:
            try:
                data = await content.readany()
            except (ConnectionError, OSError):
                raise S3Error("IncompleteBody") from None
            except Exception as err:  # aiohttp's payload errors (bad chunked encoding, connection lost)
                raise S3Error("IncompleteBody", f"the body could not be read ({type(err).__name__})") from None
            if not data:
                return
            yield data

    async def _line(self) -> bytes:
        content = self.request.content
        try:
            line = await content.readuntil(b"\n")
        except ValueError:
            raise S3Error("InvalidRequest", "an aws-chunked line is too long") from None
        except Exception:
            raise S3Error("IncompleteBody") from None
        if not line.endswith(b"\n"):
            raise S3Error("IncompleteBody")
        if len(line) > MAX_CHUNK_HEADER:
            raise S3Error("InvalidRequest", "an aws-chunked line is too long")
        return line.rstrip(b"\r\n")

    async def _exact(self, size: int) -> AsyncIterator[bytes]:
        content = self.request.content
        left = size
        while left:
            try:
                data = await content.read(min(left, READ_SIZE))
            except Exception:
                raise S3Error("IncompleteBody") from None
            if not data:
                raise S3Error("IncompleteBody")
            left -= len(data)
            yield data

    async def _chunked(self) -> AsyncIterator[bytes]:
        signed = self.mode.startswith("STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
        signing = self.ctx.signing
        if signed and signing is None:
            raise S3Error("AccessDenied", "signed chunks need a SigV4-signed request")
        previous = signing.seed_signature if signing else ""
        while True:
            header = (await self._line()).decode("latin-1")
            size_text, _, extension = header.partition(";")
            try:
                size = int(size_text.strip(), 16)
            except ValueError:
                raise S3Error("InvalidRequest", "malformed aws-chunked chunk header") from None
            if size < 0 or size > self.max_size:
                raise S3Error("InvalidRequest", "aws-chunked chunk size out of range")
            chunk_hash = hashlib.sha256() if signed else None
            async for data in self._exact(size):
                if chunk_hash is not None:
                    chunk_hash.update(data)
                yield data
            if signed:
                name, _, provided = extension.strip().partition("=")
                if name != "chunk-signature":
                    raise S3Error("InvalidRequest", "a signed chunk has no chunk-signature")
                expected = auth.chunk_signature(signing, previous, chunk_hash.hexdigest())  # type: ignore[arg-type,union-attr]
                if not hmac.compare_digest(expected, provided.strip().lower()):
                    raise S3Error("SignatureDoesNotMatch", "a chunk signature does not match")
                previous = expected
            if size == 0:
                break
            if await self._line() != b"":
                raise S3Error("InvalidRequest", "aws-chunked data is not followed by CRLF")
        if self.mode.endswith("-TRAILER"):
            await self._read_trailers(previous, signed)

    async def _read_trailers(self, previous: str, signed: bool) -> None:
        lines = []
        for _ in range(MAX_TRAILER_LINES + 1):
            line = (await self._line()).decode("latin-1")
            if not line:
                break
            lines.append(line)
        else:
            raise S3Error("InvalidRequest", "too many trailing headers")
        signature = ""
        text = ""
        for line in lines:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip()
            if name == "x-amz-trailer-signature":
                signature = value
                continue
            self.trailers[name] = value
            text += f"{name}:{value}\n"
        if signed:
            expected = auth.trailer_signature(self.ctx.signing, previous, text)  # type: ignore[arg-type]
            if not hmac.compare_digest(expected, signature.lower()):
                raise S3Error("SignatureDoesNotMatch", "the trailer signature does not match")
