"""The one bounded reader of request bodies: a client controls how much it sends, so every body read in memory has a
limit, checked against the announced length before reading and against what arrives while reading."""

from __future__ import annotations

from aiohttp import web

CHUNK = 65536


class BodyTooLarge(Exception):
    """The body is (or claims to be) larger than `limit`; the caller answers in its API's error format (413)."""

    def __init__(self, limit: int):
        super().__init__(f"the request body is limited to {limit} bytes")
        self.limit = limit


async def read_bounded(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(CHUNK):
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)
