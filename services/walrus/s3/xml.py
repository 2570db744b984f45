"""S3 XML: small string builders for responses, and a bounded, defused parser for request bodies."""

from __future__ import annotations

import datetime as dt
import email.utils
import functools
import re
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

import defusedxml.ElementTree as SafeET
from aiohttp import web
from defusedxml import DefusedXmlException

from common.bodies import BodyTooLarge, read_bounded
from services.walrus.s3 import errors

NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
# A parser turns a raw CR into LF: a key with a CR is listed with a character reference, as S3 does.
_CR = {"\r": "&#13;"}
# Not in XML 1.0's Char production: C0 controls other than tab, LF and CR, surrogates, U+FFFE and U+FFFF.
NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
MAX_XML_BODY = 1 << 20  # DeleteObjects with 1000 long keys fits; nothing legitimate is larger


def el(tag: str, content: object = "") -> str:
    """`<tag>content</tag>`; str content is escaped, use `raw()` children for nested elements."""
    if isinstance(content, Raw):
        return f"<{tag}>{content.text}</{tag}>"
    if isinstance(content, bool):
        content = "true" if content else "false"
    # Such characters can come only from what a client sent (an error naming its key) or from a key stored
    # before they were refused: replaced, so the document stays well-formed.
    return f"<{tag}>{escape(NOT_XML.sub(chr(0xFFFD), str(content)), _CR)}</{tag}>"


class Raw:
    """Already-built XML."""

    def __init__(self, text: str):
        self.text = text


def raw(*parts: str) -> Raw:
    return Raw("".join(parts))


def document(root: str, body: str, namespace: bool = True) -> bytes:
    ns = f' xmlns="{NAMESPACE}"' if namespace else ""
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}{ns}>{body}</{root}>'.encode()


def xml_response(root: str, body: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=document(root, body), content_type="application/xml", headers=headers or {})


def iso_time(stamp: float) -> str:
    moment = dt.datetime.fromtimestamp(stamp, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@functools.lru_cache(maxsize=4096)  # an object's Last-Modified, formatted once rather than on every GET
def http_time(stamp: float) -> str:
    return email.utils.formatdate(stamp, usegmt=True)


def parse_http_time(value: str) -> float | None:
    if not value:  # the usual case (no If-Modified-Since & co): no parse, no exception
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


async def read_xml_body(request: web.Request, limit: int = MAX_XML_BODY) -> bytes:
    """A request's XML body, refusing more than `limit` bytes without reading them all."""
    try:
        body = await read_bounded(request, limit)
    except BodyTooLarge:
        raise errors.S3Error("MaxMessageLengthExceeded", f"XML bodies are limited to {limit} bytes") from None
    if request.content_length is not None and len(body) != request.content_length:
        raise errors.S3Error("IncompleteBody")
    return body


def parse_xml(body: bytes, code: str = "MalformedXML") -> ET.Element:
    """Parse untrusted XML (no entities, no DTDs); tags lose their namespace."""
    if not body.strip():
        raise errors.S3Error(code)
    try:
        root: ET.Element = SafeET.fromstring(body, forbid_dtd=True)
    except (ET.ParseError, DefusedXmlException, ValueError) as err:
        raise errors.S3Error(code, f"{errors.ERRORS[code][1]} ({type(err).__name__})") from None
    for node in root.iter():
        if isinstance(node.tag, str) and node.tag.startswith("{"):
            node.tag = node.tag.split("}", 1)[1]
    return root


def child_text(node: ET.Element, tag: str, default: str | None = None) -> str | None:
    found = node.find(tag)
    if found is None:
        return default
    return found.text or ""
