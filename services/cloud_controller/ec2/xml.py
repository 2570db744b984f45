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


CHUNK_CHARS = 1 << 15  # an answer's pieces (response_chunks): below the allocator's threshold for fresh pages


def response(operation: OperationModel, data: dict[str, Any] | None, request_id: str, version: str) -> bytes:
    return b"".join(response_chunks(operation, data, request_id, version))


def response_chunks(
    operation: OperationModel, data: dict[str, Any] | None, request_id: str, version: str
) -> list[bytes]:
    """The answer in pieces of about 32 KiB, to be sent one after the other: a DescribeInstances of ten thousand
    instances is 10 MB, and making it one string and then one bytes object (fresh memory, twice its size, filled
    page by page) took about half of the CLC's time for it."""
    name = operation.name
    out = [XML_DECL, f'<{name}Response xmlns="{namespace(version)}"><requestId>{request_id}</requestId>']
    shape = operation.output_shape
    if shape is None:
        out.append("<return>true</return>")  # EC2's answer to actions that return nothing else (old tools read it)
    elif data:
        _members(out, shape, data)
    out.append(f"</{name}Response>")
    chunks: list[bytes] = []
    start = size = 0
    for end, part in enumerate(out, 1):
        size += len(part)
        if size >= CHUNK_CHARS:
            chunks.append("".join(out[start:end]).encode())
            start, size = end, 0
    if start < len(out):
        chunks.append("".join(out[start:]).encode())
    return chunks


def error(code: str, message: str, request_id: str) -> bytes:
    return (
        f"{XML_DECL}<Response><Errors><Error><Code>{escape(code)}</Code>"
        f"<Message>{escape(_NOT_XML.sub('', message))}</Message>"
        f"</Error></Errors><RequestID>{request_id}</RequestID></Response>"
    ).encode()


class Prebuilt(str):
    """A structure's members already serialized (see `members_xml`), emitted as is: lets an action cache the
    XML of objects that rarely change (DescribeInstances over thousands of instances)."""


def members_xml(shape: Shape, data: dict[str, Any]) -> Prebuilt:
    out: list[str] = []
    _members(out, shape, data)
    return Prebuilt("".join(out))


class _Plan:
    """What serializing a shape reads of botocore's model, read once: its kind; a structure's members (key ->
    element name, member plan); a list's item element name, item plan and flattening; a map's key and value.
    The sub-plans are made when the plan is first used (`complete`), not with it: EC2's shapes nest deeply
    (DescribeInstances' Instance alone has dozens of members), and a plan of the whole tree, built up front, cost
    a fresh CLC's first answer a millisecond even when that answer was empty."""

    __slots__ = (
        "done",
        "flattened",
        "item",
        "item_tag",
        "key",
        "key_tag",
        "kind",
        "members",
        "shape",
        "value",
        "value_tag",
    )

    def __init__(self, shape: Shape):
        self.shape, self.kind, self.done = shape, shape.type_name, False
        self.members: dict[str, tuple[str, _Plan]] = {}
        if self.kind == "list":
            member: Any = getattr(shape, "member")  # noqa: B009 (a ListShape's, typed on the subclass)
            self.item_tag = member.serialization.get("name", "member")
            self.flattened = bool(shape.serialization.get("flattened"))
        elif self.kind == "map":
            key: Any = getattr(shape, "key")  # noqa: B009
            value: Any = getattr(shape, "value")  # noqa: B009
            self.key_tag = key.serialization.get("name", "key")
            self.value_tag = value.serialization.get("name", "value")

    def complete(self) -> None:
        """The sub-plans, one level down (each completed in turn when it is first used; shapes may contain
        themselves)."""
        shape: Any = self.shape
        if self.kind == "structure":
            self.members = {
                key: (member.serialization.get("name", key), _plan(member)) for key, member in shape.members.items()
            }
        elif self.kind == "list":
            self.item = _plan(shape.member)
        elif self.kind == "map":
            self.key, self.value = _plan(shape.key), _plan(shape.value)
        self.done = True


# By id of the shape, the shape kept in the plan (so the id is never another's): the model's shapes live as long
# as the process, and a response of ten thousand instances reads them a million times.
_PLANS: dict[int, _Plan] = {}


def _plan(shape: Shape) -> _Plan:
    plan = _PLANS.get(id(shape))
    if plan is not None and plan.shape is shape:
        return plan
    plan = _PLANS[id(shape)] = _Plan(shape)
    return plan


def _members(out: list[str], shape: Shape, data: dict[str, Any]) -> None:
    _plan_members(out, _plan(shape), data)


def _plan_members(out: list[str], plan: _Plan, data: dict[str, Any]) -> None:
    if not plan.done:
        plan.complete()
    members = plan.members
    for key, value in data.items():
        if value is None:
            continue
        member = members.get(key)
        if member is None:
            continue
        tag, sub = member
        if sub.kind in _COMPOUND:
            _plan_element(out, tag, sub, value)
        else:
            out.append(f"<{tag}>{_scalar(sub.kind, value)}</{tag}>")


_COMPOUND = frozenset({"structure", "list", "map"})


def _element(out: list[str], tag: str, shape: Shape, value: Any) -> None:
    _plan_element(out, tag, _plan(shape), value)


def _plan_element(out: list[str], tag: str, plan: _Plan, value: Any) -> None:
    kind = plan.kind
    if not plan.done and kind in ("list", "map"):
        plan.complete()
    if kind == "structure" and isinstance(value, Prebuilt):
        out.append(f"<{tag}>{value}</{tag}>")
    elif kind == "structure":
        out.append(f"<{tag}>")
        _plan_members(out, plan, value)
        out.append(f"</{tag}>")
    elif kind == "list":
        item = plan.item
        if plan.flattened:
            for entry in value:
                _plan_element(out, tag, item, entry)
            return
        item_tag = plan.item_tag
        out.append(f"<{tag}>")
        if item.kind == "structure" and value and all(isinstance(entry, Prebuilt) for entry in value):
            _prebuilt_items(out, item_tag, value)
        else:
            for entry in value:
                if entry is not None:
                    _plan_element(out, item_tag, item, entry)
        out.append(f"</{tag}>")
    elif kind == "map":
        out.append(f"<{tag}>")
        for key, entry in value.items():
            out.append("<entry>")
            _plan_element(out, plan.key_tag, plan.key, key)
            _plan_element(out, plan.value_tag, plan.value, entry)
            out.append("</entry>")
        out.append(f"</{tag}>")
    else:
        out.append(f"<{tag}>{_scalar(kind, value)}</{tag}>")


def _prebuilt_items(out: list[str], item_tag: str, items: list[Prebuilt]) -> None:
    """Serialized structures joined with their item tags a group at a time, each group about CHUNK_CHARS: a
    DescribeInstances of ten thousand instances is ten megabytes of them, and adding three parts to `out` for each
    instance, then walking those parts again to cut the answer's pieces, was a third of its time."""
    opening, closing = f"<{item_tag}>", f"</{item_tag}>"
    between = closing + opening
    per_group = max(1, CHUNK_CHARS // max(1, len(items[0])))
    for start in range(0, len(items), per_group):
        out.append(opening + between.join(items[start : start + per_group]) + closing)


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
