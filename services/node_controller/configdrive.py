"""The NoCloud config drive: an ISO 9660 image labelled `cidata` with `meta-data` and `user-data`.

For guests that cannot reach the metadata service (no network metadata, or before their NIC is up). The
layout is cloud-init's NoCloud: `meta-data` is YAML with instance-id, local-hostname and public-keys, and
`user-data` is the user's data verbatim. Koala's test image reads it too (deploy/guest-image). Built with
pycdlib (pure Python, Rock Ridge + Joliet names) in a worker thread.

Templates: two drives whose files have the same names and lengths differ only in those files' bytes (pycdlib lays
out the same directories and extents), so pycdlib builds one image per (names, lengths), kept in memory, and each
instance's drive is that image with its own files' bytes written over the template's at their extents: a copy
and a few writes instead of ~0.6 ms of pure Python holding the GIL per launch.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import pycdlib

from common.messages.cc_nc import RunInstanceRequest


def meta_data(request: RunInstanceRequest) -> bytes:
    lines = [
        f"instance-id: {request.instance_id}",
        f"local-hostname: {request.instance_id}",
        f"reservation-id: {request.reservation_id}",
        f"ami-id: {request.image.id}",
        f"ami-launch-index: {request.launch_index}",
        f"instance-type: {request.vm_type.name}",
    ]
    if request.net.private_ip:
        lines.append(f"local-ipv4: {request.net.private_ip}")
    key = request.ssh_public_key.strip().replace("\n", " ")
    if key:
        lines += ["public-keys:", f"  - {json.dumps(key)}"]
    return ("\n".join(lines) + "\n").encode()


def user_data(request: RunInstanceRequest) -> bytes:
    if not request.user_data:
        return b""
    try:
        return base64.b64decode(request.user_data, validate=True)
    except (binascii.Error, ValueError):
        return b""


@dataclass(frozen=True)
class _Template:
    image: bytes
    offsets: tuple[int, ...]  # where each file's bytes start in `image`, in the order of its files


_TEMPLATES: OrderedDict[tuple[tuple[str, int], ...], _Template] = OrderedDict()
_TEMPLATES_KEPT = 64  # (names, lengths) kept, least recently used dropped: user data comes in any length
_TEMPLATES_LOCK = threading.Lock()  # builds run in worker threads


def _make_template(layout: tuple[tuple[str, int], ...]) -> _Template:
    """The drive of files with these names and lengths (zero bytes), and where pycdlib put each file's extent."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for index, (name, length) in enumerate(layout):
        iso.add_fp(io.BytesIO(bytes(length)), length, f"/F{index:07d}.;1", rr_name=name, joliet_path=f"/{name}")
    out = io.BytesIO()
    iso.write_fp(out)
    block = iso.logical_block_size
    offsets = tuple(iso.get_record(iso_path=f"/F{i:07d}.;1").extent_location() * block for i in range(len(layout)))
    iso.close()
    return _Template(out.getvalue(), offsets)


def image(files: dict[str, bytes]) -> bytes:
    """The ISO 9660 image holding `files` (name -> bytes), from the template of their names and lengths."""
    layout = tuple((name, len(data)) for name, data in files.items())
    with _TEMPLATES_LOCK:
        template = _TEMPLATES.get(layout)
        if template is not None:
            _TEMPLATES.move_to_end(layout)
    if template is None:
        template = _make_template(layout)
        with _TEMPLATES_LOCK:
            _TEMPLATES[layout] = template
            while len(_TEMPLATES) > _TEMPLATES_KEPT:
                _TEMPLATES.popitem(last=False)
    drive = bytearray(template.image)
    for offset, data in zip(template.offsets, files.values(), strict=True):
        if data:
            drive[offset : offset + len(data)] = data
    return bytes(drive)


def _build(path: Path, files: dict[str, bytes]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(image(files))
    tmp.replace(path)


async def build(path: Path, request: RunInstanceRequest) -> Path:
    files = {"meta-data": meta_data(request), "user-data": user_data(request)}
    await asyncio.get_running_loop().run_in_executor(None, _build, path, files)
    return path
