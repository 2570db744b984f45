"""The image registry: RegisterImage from a bundle manifest in Walrus, DeregisterImage, visibility and launch
permissions. Walrus checks the bundle (signature by a certificate of the caller's account, decryptable with the
cloud key) and tells who owns the bucket; this module decides the image type and keeps the records.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from common import ids
from services.cloud_controller.compute.errors import ComputeError, invalid
from services.cloud_controller.compute.store import Image, Store

log = logging.getLogger("koala.clc.images")
KIND_PREFIX = {"machine": "emi", "kernel": "eki", "ramdisk": "eri"}
MAX_LOCATION = 1024
MAX_PRODUCT_CODES = 16
_NAME = re.compile(r"^[A-Za-z0-9()\[\] ./'@_-]{3,128}$")
ARCHITECTURES = ("i386", "x86_64", "arm64")


@dataclass
class ManifestFacts:
    """What Walrus found in a valid bundle manifest."""

    bucket_owner_id: str  # the account that owns the manifest's bucket
    image_name: str = ""  # <image><name>
    architecture: str = ""
    kernel_id: str = ""  # "true" marks a kernel image; otherwise the default kernel's id, if any
    ramdisk_id: str = ""
    size: int = 0


class ImageBackend(Protocol):
    async def validate(self, location: str, account_id: str) -> ManifestFacts: ...
    async def cache(self, location: str) -> None: ...
    async def flush(self, location: str) -> None: ...


def image_kind(facts: ManifestFacts, location: str) -> str:
    """Kernel, ramdisk or machine, by Eucalyptus's conventions (the one place this rule lives)."""
    if facts.kernel_id.strip().lower() == "true":
        return "kernel"
    if facts.ramdisk_id.strip().lower() == "true":
        return "ramdisk"
    base = (facts.image_name or location.rsplit("/", 1)[-1]).lower()
    if base.startswith("vmlinuz"):
        return "kernel"
    if base.startswith("initrd"):
        return "ramdisk"
    return "machine"


def split_location(location: str) -> tuple[str, str]:
    """ "bucket/key" -> (bucket, key), refusing what cannot be a manifest location."""
    location = location.strip().lstrip("/")
    if location.startswith("services/Walrus/"):  # a full Walrus path, as some tools send it
        location = location[len("services/Walrus/") :]
    bucket, _, key = location.partition("/")
    if (
        not bucket
        or not key
        or len(location) > MAX_LOCATION
        or not key.endswith(".manifest.xml")
        or any(ord(c) < 32 for c in location)
    ):
        raise invalid("ImageLocation", f"'{location[:80]}' is not bucket/path/name.manifest.xml")
    return bucket, key


class Images:
    def __init__(self, store: Store, backend: ImageBackend | None):
        self.store, self.backend = store, backend
        self.is_admin_account: Callable[[str], bool] = lambda _: False
        self.on_deregister: list[Callable[[Image], None]] = []  # listeners (remote zones drop their copies)

    def _new_id(self, kind: str) -> str:
        while True:
            candidate = ids.new_id(KIND_PREFIX[kind])
            if candidate not in self.store.images:
                return candidate

    async def register(
        self,
        account_id: str,
        location: str,
        name: str = "",
        description: str = "",
        architecture: str = "",
        kernel_id: str = "",
        ramdisk_id: str = "",
        root_device_name: str = "",
    ) -> Image:
        bucket, key = split_location(location)
        location = f"{bucket}/{key}"
        name = name or key.rsplit("/", 1)[-1].removesuffix(".manifest.xml")
        self.check_name(account_id, name, description, architecture)
        if self.backend is None:
            raise ComputeError("Unavailable", "Walrus cannot validate images right now", 503)
        facts = await self.backend.validate(location, account_id)
        if facts.bucket_owner_id != account_id:
            raise ComputeError("AuthFailure", f"Not authorized for the bucket {bucket}", 403)
        kind = image_kind(facts, location)
        image = Image(
            image_id=self._new_id(kind),
            owner_id=account_id,
            kind=kind,
            name=name,
            location=location,
            created_at=time.time(),
            description=description,
            architecture=architecture or facts.architecture or "x86_64",
            root_device_name=root_device_name or "/dev/sda1",
        )
        if kind == "machine":
            image.kernel_id = self._default(kernel_id or _id_or_blank(facts.kernel_id, "eki"), "kernel", account_id)
            image.ramdisk_id = self._default(ramdisk_id or _id_or_blank(facts.ramdisk_id, "eri"), "ramdisk", account_id)
        await self.store.save_image(image, new=True)
        log.info("registered %s (%s) from %s for %s", image.image_id, kind, location, account_id)
        try:
            await self.backend.cache(location)  # pre-warm Walrus's decrypted cache; a failure is not fatal
        except Exception as err:
            log.warning("pre-warming %s failed: %s", location, err)
        return image

    def check_name(self, account_id: str, name: str, description: str, architecture: str = "") -> None:
        if not _NAME.match(name or ""):
            raise invalid("Name", "3-128 letters, digits and ( ) [ ] space . / ' @ _ -")
        if len(description) > 255:
            raise invalid("Description", "at most 255 characters")
        if architecture and architecture not in ARCHITECTURES:
            raise invalid("Architecture", f"one of {', '.join(ARCHITECTURES)}")
        for image in self.store.images.values():
            if image.owner_id == account_id and image.name == name:
                raise ComputeError("InvalidAMIName.Duplicate", f"AMI name {name} is already in use by {image.image_id}")

    async def register_ebs(
        self,
        account_id: str,
        name: str,
        description: str = "",
        architecture: str = "",
        kernel_id: str = "",
        ramdisk_id: str = "",
        root_device_name: str = "",
        block_devices: list[dict[str, Any]] | None = None,
        state: str = "available",
        reboot_instance_id: str = "",
    ) -> Image:
        """An EBS-backed machine image: no bundle, its root (and other disks) made from snapshots at each launch
        (the mappings are checked by the caller, ebs/roots.py). ImageLocation is OWNER/NAME, as EC2 shows it."""
        self.check_name(account_id, name, description, architecture)
        image = Image(
            image_id=self._new_id("machine"),
            owner_id=account_id,
            kind="machine",
            name=name,
            location=f"{account_id}/{name}",
            created_at=time.time(),
            description=description,
            architecture=architecture or "x86_64",
            root_device_name=root_device_name or "/dev/sda1",
            state=state,
            root_device_type="ebs",
            block_devices=list(block_devices or []),
            reboot_instance_id=reboot_instance_id,
        )
        image.kernel_id = self._default(kernel_id, "kernel", account_id)
        image.ramdisk_id = self._default(ramdisk_id, "ramdisk", account_id)
        await self.store.save_image(image, new=True)
        log.info("registered %s (EBS-backed, root %s) for %s", image.image_id, image.root_device_name, account_id)
        return image

    def _default(self, image_id: str, kind: str, account_id: str) -> str:
        if not image_id:
            return ""
        image = self.store.images.get(ids.normalize(image_id))
        if image is None or image.kind != kind or (not image.can_launch(account_id) and not image.is_public):
            code = "InvalidKernelId.Malformed" if kind == "kernel" else "InvalidRamdiskID.Malformed"
            raise ComputeError(code, f"The {kind} image '{image_id}' does not exist")
        return image.image_id

    def get(self, image_id: str) -> Image:
        if not ids.is_id(image_id) or image_id.split("-")[0] not in ("emi", "eki", "eri", "ami", "aki", "ari"):
            raise ComputeError("InvalidAMIID.Malformed", f'Invalid id: "{image_id}"')
        image = self.store.images.get(ids.normalize(image_id))
        if image is None:
            raise ComputeError("InvalidAMIID.NotFound", f"The image id '[{image_id}]' does not exist")
        return image

    def owned(self, image_id: str, account_id: str, is_admin: bool) -> Image:
        image = self.get(image_id)
        if image.owner_id != account_id and not is_admin:
            if image.can_launch(account_id):
                raise ComputeError("AuthFailure", f"Not authorized for image:{image_id}", 403)
            raise ComputeError("InvalidAMIID.NotFound", f"The image id '[{image_id}]' does not exist")
        return image

    async def deregister(self, image_id: str, account_id: str, is_admin: bool) -> None:
        image = self.owned(image_id, account_id, is_admin)
        await self.store.delete_image(image.image_id)
        log.info("deregistered %s", image.image_id)
        for listener in self.on_deregister:
            listener(image)
        if self.backend is not None and image.root_device_type != "ebs":
            try:
                await self.backend.flush(image.location)
            except Exception as err:
                log.warning("flushing %s from Walrus's cache failed: %s", image.location, err)

    def visible(
        self,
        account_id: str,
        is_admin: bool,
        image_ids: Iterable[str] = (),
        owners: Iterable[str] = (),
        executable_by: Iterable[str] = (),
    ) -> list[Image]:
        """DescribeImages's selection: the named images, or all the caller may see, narrowed by owners and
        executable-by ("self", "all", account ids; owners also "amazon"/"eucalyptus" = the cloud admin's)."""
        image_ids, owners, executable_by = list(image_ids), list(owners), list(executable_by)
        if image_ids:
            wanted = [self.get(i) for i in image_ids]  # malformed or unknown ids are errors, as in EC2
            result = [i for i in wanted if is_admin or i.can_launch(account_id)]
            if len(result) < len(wanted):
                missing = [i.image_id for i in wanted if i not in result]
                raise ComputeError("InvalidAMIID.NotFound", f"The image id '[{', '.join(missing)}]' does not exist")
        else:
            result = [i for i in self.store.images.values() if is_admin or i.can_launch(account_id)]
        if owners:
            result = [i for i in result if any(self._owned_by(i, o, account_id) for o in owners)]
        if executable_by:
            result = [i for i in result if any(self._executable_by(i, e, account_id) for e in executable_by)]
        return sorted(result, key=lambda i: (i.created_at, i.image_id))

    def _owned_by(self, image: Image, owner: str, account_id: str) -> bool:
        if owner == "self":
            return image.owner_id == account_id
        if owner in ("amazon", "eucalyptus", "system"):
            return self.is_admin_account(image.owner_id)
        if owner == "all":
            return True
        return image.owner_id == owner

    @staticmethod
    def _executable_by(image: Image, who: str, account_id: str) -> bool:
        if who == "all":
            return image.is_public
        if who == "self":
            return image.can_launch(account_id)
        return image.is_public or who in image.launch_permissions or image.owner_id == who

    async def modify_launch_permission(
        self, image: Image, add: list[dict[str, Any]], remove: list[dict[str, Any]]
    ) -> None:
        """`add`/`remove`: items {"UserId": account} or {"Group": "all"}, as EC2's LaunchPermission."""
        for item in add + remove:
            group, user = item.get("Group"), item.get("UserId")
            if group is not None and group != "all":
                raise invalid("UserGroup", "the only group is 'all'")
            if user is not None and not re.fullmatch(r"[0-9A-Za-z_-]{1,64}", user):
                raise invalid("UserId", f"'{str(user)[:64]}' is not an account id")
            if group is None and user is None:
                raise ComputeError("MissingParameter", "A launch permission needs a UserId or a Group")
        for item in add:
            if item.get("Group") == "all":
                image.is_public = True
            elif item.get("UserId"):
                image.launch_permissions.add(item["UserId"])
        for item in remove:
            if item.get("Group") == "all":
                image.is_public = False
            elif item.get("UserId"):
                image.launch_permissions.discard(item["UserId"])
        await self.store.save_image(image)

    async def set_attribute(self, image: Image, attribute: str, value: str, account_id: str) -> None:
        if attribute == "description":
            if len(value) > 255:
                raise invalid("Description", "at most 255 characters")
            image.description = value
        elif attribute in ("kernel", "ramdisk"):
            if image.kind != "machine":
                raise invalid("Attribute", f"only machine images have a {attribute}")
            chosen = self._default(value, attribute, account_id) if value else ""
            if attribute == "kernel":
                image.kernel_id = chosen
            else:
                image.ramdisk_id = chosen
        else:
            raise invalid("Attribute", f"'{attribute[:40]}' cannot be modified")
        await self.store.save_image(image)

    async def add_product_codes(self, image: Image, codes: list[str]) -> None:
        """Attach product codes (as EC2, never removed once attached). A code belongs to the account that first
        attached it: another account's images cannot carry it, so ConfirmProductInstance answers its owner only."""
        from services.cloud_controller.compute.attributes import check_product_code

        if not codes:
            raise ComputeError("MissingParameter", "The request must contain the parameter ProductCode")
        if len(codes) + len(image.product_codes) > MAX_PRODUCT_CODES:
            raise invalid("ProductCode", f"an image has at most {MAX_PRODUCT_CODES} product codes")
        for code in codes:
            check_product_code(code)
            for other in self.store.images.values():
                if code in other.product_codes and other.owner_id != image.owner_id:
                    raise ComputeError("InvalidParameterValue", f"The product code {code} belongs to another account")
        image.product_codes.update(codes)
        await self.store.save_image(image)
        log.info("%s: product codes %s", image.image_id, ", ".join(sorted(image.product_codes)))


def _id_or_blank(value: str, prefix: str) -> str:
    value = value.strip()
    return value if ids.is_id(value) and value.lower().startswith(prefix + "-") else ""
