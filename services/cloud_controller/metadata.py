"""The instance metadata service, reached from guests through the CC's 169.254.169.254 DNAT to the CLC's port.

Only paths starting with `/latest/` or `/YYYY-MM-DD/` are routed here, so the EC2 API at `/` is untouched. The
instance is the live one whose private address is the request's source address; anything else is 404, as is
every unknown path. Answers are plain text, directories list their entries one per line (EC2's format).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable

from aiohttp import web

from services.cloud_controller.compute.store import Instance, Store

VERSION_PATTERN = r"latest|\d{4}-\d{2}-\d{2}"
_DATE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$")
MAX_PATH = 512

Tree = dict[str, "Tree | str"]


def block_device_mapping(instance: Instance, volume_devices: list[str] | None = None) -> Tree:
    """EC2's block-device-mapping/ directory: `ami` and `root` (the root device), `ephemeralN` and `swap` (the disks an
    instance-store instance gets with its type, named as Eucalyptus names them; an EBS-backed one has none), and
    `ebsN` for each EBS volume it launched or last started with other than the root (`volume_devices`, the root's
    first; N counts from 1 over them all, the root's included, as EC2 numbers them)."""
    if instance.root_device_type == "ebs":
        tree: Tree = {"ami": instance.root_device_name, "root": instance.root_device_name}
    else:
        tree = {"emi": "sda1", "ami": "sda1", "ephemeral0": "sda2", "swap": "sda3", "root": "/dev/sda1"}
    for number, device in enumerate(volume_devices or [], start=1):
        if device != instance.root_device_name:
            tree[f"ebs{number}"] = device.removeprefix("/dev/")
    return tree


def instance_tree(instance: Instance, store: Store, zone_of: Callable[[Instance], str]) -> Tree:
    """The meta-data directory of one instance (values are strings; dicts are sub-directories)."""
    reservation = store.reservations.get(instance.reservation_id)
    image = store.images.get(instance.image_id)
    public_ip = instance.public_ip or instance.private_ip
    tree: Tree = {
        "ami-id": instance.image_id,
        "ami-launch-index": str(instance.launch_index),
        "ami-manifest-path": image.location if image else "(unknown)",
        "block-device-mapping": block_device_mapping(instance),
        "hostname": instance.private_ip,
        "instance-id": instance.instance_id,
        "instance-type": instance.vm_type,
        "local-hostname": instance.private_ip,
        "local-ipv4": instance.private_ip,
        "placement": {"availability-zone": zone_of(instance)},
        "public-hostname": public_ip,
        "public-ipv4": public_ip,
        "reservation-id": instance.reservation_id,
        "security-groups": "\n".join(reservation.groups if reservation else []),
    }
    if image and image.kind == "machine":
        tree["ancestor-ami-ids"] = image.image_id
    if image and image.product_codes:
        tree["product-codes"] = "\n".join(sorted(image.product_codes))
    if instance.kernel_id:
        tree["kernel-id"] = instance.kernel_id
    if instance.ramdisk_id:
        tree["ramdisk-id"] = instance.ramdisk_id
    if instance.key_material:
        tree["public-keys"] = {"0": {"openssh-key": instance.key_material.strip() + "\n"}}
    return tree


def _listing(tree: Tree) -> str:
    return "\n".join(f"{k}/" if isinstance(v, dict) else k for k, v in sorted(tree.items()))


class MetadataService:
    def __init__(
        self,
        store: Store,
        zone_of: Callable[[Instance], str] = lambda i: i.zone,
        extras: list[Callable[[Instance], Tree]] | None = None,
    ):
        self.store, self.zone_of = store, zone_of
        self.extras = extras if extras is not None else []  # other parts' entries (the spot notice)

    def install(self, app: web.Application) -> None:
        app.router.add_get(r"/{version:" + VERSION_PATTERN + r"}", self.handle)
        app.router.add_get(r"/{version:" + VERSION_PATTERN + r"}/{path:.*}", self.handle)

    def caller(self, request: web.Request) -> Instance | None:
        instance_id = self.store.by_private_ip.get(request.remote or "")
        instance = self.store.instances.get(instance_id) if instance_id else None
        return instance if instance is not None and instance.live else None

    async def handle(self, request: web.Request) -> web.Response:
        version = request.match_info["version"]
        path = request.match_info.get("path", "")
        if version != "latest" and not _DATE.match(version):
            raise web.HTTPNotFound(text="Not Found\n")
        instance = self.caller(request)
        if instance is None or len(path) > MAX_PATH:
            raise web.HTTPNotFound(text="Not Found\n")
        parts = [p for p in path.split("/") if p]
        if not parts:
            listing = "meta-data/\nuser-data" if instance.user_data else "meta-data/"
            return web.Response(text=listing)
        head, rest = parts[0], parts[1:]
        if head == "user-data" and not rest:
            if not instance.user_data:
                raise web.HTTPNotFound(text="Not Found\n")
            return web.Response(body=base64.b64decode(instance.user_data), content_type="application/octet-stream")
        if head != "meta-data":
            raise web.HTTPNotFound(text="Not Found\n")
        tree = instance_tree(instance, self.store, self.zone_of)
        for extra in self.extras:
            tree.update(extra(instance))
        node: Tree | str = tree
        for index, part in enumerate(rest):
            if not isinstance(node, dict) or part not in node:
                # EC2 lists public keys as "0=name" and also answers public-keys/0=name/.
                if isinstance(node, dict) and rest[index - 1 : index] == ["public-keys"] and part.split("=")[0] in node:
                    node = node[part.split("=")[0]]
                    continue
                raise web.HTTPNotFound(text="Not Found\n")
            node = node[part]
        if isinstance(node, dict):
            if rest == ["public-keys"]:
                return web.Response(text=f"0={instance.key_name}")
            return web.Response(text=_listing(node))
        return web.Response(text=node)
