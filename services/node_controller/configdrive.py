"""The NoCloud config drive: an ISO 9660 image labelled `cidata` with `meta-data` and `user-data`.

For guests that cannot reach the metadata service (no network metadata, or before their NIC is up). The
layout is cloud-init's NoCloud: `meta-data` is YAML with instance-id, local-hostname and public-keys, and
`user-data` is the user's data verbatim. Koala's test image reads it too (deploy/guest-image). Built with
pycdlib (pure Python, Rock Ridge + Joliet names) in a worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
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


def _build(path: Path, files: dict[str, bytes]) -> None:
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for index, (name, data) in enumerate(files.items()):
        iso_name = f"/F{index:07d}.;1"
        iso.add_fp(io.BytesIO(data), len(data), iso_name, rr_name=name, joliet_path=f"/{name}")
    tmp = path.with_name(path.name + ".tmp")
    iso.write(str(tmp))
    iso.close()
    tmp.replace(path)


async def build(path: Path, request: RunInstanceRequest) -> Path:
    files = {"meta-data": meta_data(request), "user-data": user_data(request)}
    await asyncio.get_running_loop().run_in_executor(None, _build, path, files)
    return path
