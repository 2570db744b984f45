"""A dict shaped like an operation's botocore output shape -> EC2 response XML; and EC2 error XML.

Element names follow the model's `locationName` (else the member name); lists are wrapped (`<keySet><item>`)
unless the model marks them flattened; booleans are `true`/`false`, timestamps ISO 8601 UTC, blobs base64. The
root is `<ActionResponse xmlns="http://ec2.amazonaws.com/doc/VERSION/">` with `<requestId>` first, so botocore,
awscli and the ec2-api-tools parse it as they parse EC2's own. Keys of the dict that the shape does not know are
ignored; `None` values are left out.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import uuid
from typing import Any
from xml.sax.saxutils import escape

from botocore.model import OperationModel, Shape

XML_DECL = '<?xml version="1.0" encoding="UTF-8"?>\n'
# Characters XML 1.0 cannot carry; user-supplied strings lose them rather than break the document.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# What a text needs changed at all (to drop or to escape): most values (ids, names, states) need nothing.
_NEEDS_WORK = re.compile("[&<>\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def namespace(version: str) -> str:
    return f"http://ec2.amazonaws.com/doc/{version}/"


def response(operation: OperationModel, data: dict[str, Any] | None, request_id: str, version: str) -> bytes:
    name = operation.name
    out = [XML_DECL, f'<{name}Response xmlns="{namespace(version)}"><requestId>{request_id}</requestId>']
    shape = operation.output_shape
    if shape is None:
        out.append("<return>true</return>")  # EC2's answer to actions that return nothing else (old tools read it)
    elif data:
        _members(out, shape, data)
    out.append(f"</{name}Response>")
    return "".join(out).encode()


def error(code: str, message: str, request_id: str) -> bytes:
    return (
        f"{XML_DECL}<Response><Errors><Error><Code>{escape(code)}</Code>"
        f"<Message>{escape(_NOT_XML.sub('', message))}</Message>"
        f"</Error></Errors><RequestID>{request_id}</RequestID></Response>"
    ).encode()


def _members(out: list[str], shape: Shape, data: dict[str, Any]) -> None:
    members = shape.members
    for key, value in data.items():
        if value is None:
            continue
        member = members.get(key)
        if member is None:
            continue
        _element(out, member.serialization.get("name", key), member, value)


class Prebuilt(str):
    """A structure's members already serialized (see `members_xml`), emitted as is: lets an action cache the
    XML of objects that rarely change (DescribeInstances over thousands of instances)."""


def members_xml(shape: Shape, data: dict[str, Any]) -> Prebuilt:
    out: list[str] = []
    _members(out, shape, data)
    return Prebuilt("".join(out))


def _element(out: list[str], tag: str, shape: Shape, value: Any) -> None:
    kind = shape.type_name
    if kind == "structure" and isinstance(value, Prebuilt):
        out.append(f"<{tag}>{value}</{tag}>")
    elif kind == "structure":
        out.append(f"<{tag}>")
        _members(out, shape, value)
        out.append(f"</{tag}>")
    elif kind == "list":
        item_shape = shape.member
        if shape.serialization.get("flattened"):
            for item in value:
                _element(out, tag, item_shape, item)
            return
        item_tag = item_shape.serialization.get("name", "member")
        out.append(f"<{tag}>")
        # Serialized structures go in as they are, not copied into a new string each (a DescribeInstances of
        # ten thousand instances is ten megabytes of them).
        prebuilt = (f"<{item_tag}>", f"</{item_tag}>") if item_shape.type_name == "structure" else None
        for item in value:
            if prebuilt is not None and isinstance(item, Prebuilt):
                out += (prebuilt[0], item, prebuilt[1])
            elif item is not None:
                _element(out, item_tag, item_shape, item)
        out.append(f"</{tag}>")
    elif kind == "map":
        key_tag = shape.key.serialization.get("name", "key")
        value_tag = shape.value.serialization.get("name", "value")
        out.append(f"<{tag}>")
        for key, item in value.items():
            out.append("<entry>")
            _element(out, key_tag, shape.key, key)
            _element(out, value_tag, shape.value, item)
            out.append("</entry>")
        out.append(f"</{tag}>")
    else:
        out.append(f"<{tag}>{_scalar(kind, value)}</{tag}>")


def _scalar(kind: str, value: Any) -> str:
    if kind == "boolean":
        return "true" if value else "false"
    if kind == "timestamp":
        return timestamp(value)
    if kind == "blob":
        raw = value.encode() if isinstance(value, str) else bytes(value)
        return base64.b64encode(raw).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return escape(_NOT_XML.sub("", text)) if _NEEDS_WORK.search(text) else text


def timestamp(value: Any) -> str:
    """ISO 8601 UTC with milliseconds, as EC2 writes times; accepts epoch seconds or a datetime."""
    if isinstance(value, int | float):
        value = dt.datetime.fromtimestamp(value, dt.UTC)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
        when: dt.datetime = value
        return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
    return escape(str(value))


def http_error(status: int, code: str, message: str) -> tuple[bytes, str]:
    """EC2 error XML for what the listener answers itself (a malformed request, a full service)."""
    return error({"ServiceUnavailable": "Unavailable"}.get(code, code), message, str(uuid.uuid4())), "text/xml"
