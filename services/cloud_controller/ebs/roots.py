"""EBS-backed images and instances: block device mappings, root volumes made from an image's snapshot at launch,
the volumes an instance boots with (exported by the CC at each of its starts), CreateImage.

An EBS-backed image is a registry record (compute/store.Image, root_device_type ebs) whose block device mappings
name snapshots, the root's first; it has no bundle in Walrus. Launching it makes, for each instance, one volume per
EBS mapping (the image's, changed or added to by RunInstances' BlockDeviceMappings), recorded attached to the
instance from the start (`boot`), and the launch waits until the zone's storage has made them; the CC then exports
them to the instance's node before the node creates the domain, the root as the guest's first disk. A stopped
instance keeps them (attached, not exported); StartInstances sends them again, perhaps to another node. At
termination each goes as its DeleteOnTermination says (engine._release_ended).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Collection
from typing import Any

from common.messages.cc_nc import LaunchVolume
from common.messages.storage import MAX_VOLUME_GB
from services.cloud_controller.compute.errors import ComputeError, invalid
from services.cloud_controller.compute.store import Image, Instance
from services.cloud_controller.ebs.engine import BootAttachment, Ebs
from services.cloud_controller.ebs.store import Volume
from services.cloud_controller.metadata import block_device_mapping

log = logging.getLogger("koala.clc.ebs")
MAX_MAPPINGS = 16
MAPPING_DEVICE = re.compile(r"^/dev/(sd|xvd|vd)[a-z][0-9]{0,2}$")
VOLUMES_READY_TIMEOUT = 300.0  # a launch waits this long for its volumes to be made from their snapshots
REBOOT_REASON = "User initiated (CreateImage)"  # the stop reason of an instance CreateImage reboots


def parse_mappings(raw: Any, parameter: str = "BlockDeviceMapping") -> list[dict[str, Any]]:
    """EC2's BlockDeviceMappings -> [{"device", "snapshot_id", "size", "delete_on_termination"} | {"device",
    "no_device": True}]. Ephemeral (VirtualName) mappings are accepted and left out: instance-store disks come with
    the VM type."""
    items = raw or []
    if not isinstance(items, list) or len(items) > MAX_MAPPINGS:
        raise invalid(parameter, f"at most {MAX_MAPPINGS} mappings")
    result: list[dict[str, Any]] = []
    seen: set[str] = set()
    for item in items:
        device = (item or {}).get("DeviceName") or ""
        if not isinstance(device, str) or not MAPPING_DEVICE.match(device):
            raise invalid(f"{parameter}.DeviceName", f"'{str(device)[:32]}' is not a device name such as /dev/sdf")
        if device in seen:
            raise invalid(f"{parameter}.DeviceName", f"{device} is mapped twice")
        seen.add(device)
        if "NoDevice" in item:
            result.append({"device": device, "no_device": True})
            continue
        ebs = item.get("Ebs")
        if ebs is None:
            continue  # VirtualName ephemeralN
        volume_type = ebs.get("VolumeType") or "standard"
        if volume_type != "standard":
            raise invalid(f"{parameter}.Ebs.VolumeType", f"'{str(volume_type)[:32]}' is not supported here")
        if ebs.get("Encrypted") or ebs.get("Iops") is not None:
            raise ComputeError("UnsupportedOperation", "Encrypted and provisioned-IOPS volumes are not supported here")
        size = ebs.get("VolumeSize")
        if size is not None and (not isinstance(size, int) or not 1 <= size <= MAX_VOLUME_GB):
            raise invalid(f"{parameter}.Ebs.VolumeSize", f"between 1 and {MAX_VOLUME_GB} GiB")
        snapshot_id = ebs.get("SnapshotId") or ""
        if not snapshot_id and size is None:
            raise ComputeError("MissingParameter", f"{device}: an EBS mapping needs a SnapshotId or a VolumeSize")
        delete = ebs.get("DeleteOnTermination")
        result.append({
            "device": device,
            "snapshot_id": str(snapshot_id)[:64],
            "size": size or 0,
            "delete_on_termination": True if delete is None else bool(delete),
        })  # fmt: skip
    return result


def merge_mappings(image: Image, requested: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The image's EBS mappings with the launch's changes (NoDevice removes one, a mapping of the same device
    changes its size or DeleteOnTermination, others are added); the root first."""
    merged: dict[str, dict[str, Any]] = {m["device"]: dict(m) for m in image.block_devices}
    for mapping in requested:
        device = mapping["device"]
        if mapping.get("no_device"):
            if image.root_device_type == "ebs" and device == image.root_device_name:
                raise invalid("BlockDeviceMapping", f"the root device {device} cannot be suppressed")
            merged.pop(device, None)
        elif device in merged:
            known = merged[device]
            known["size"] = mapping["size"] or known["size"]
            known["delete_on_termination"] = mapping["delete_on_termination"]
            if mapping["snapshot_id"] and mapping["snapshot_id"] != known["snapshot_id"]:
                raise invalid("BlockDeviceMapping", f"{device} is the image's snapshot {known['snapshot_id']}")
        else:
            if image.root_device_type != "ebs" and device == image.root_device_name:
                raise invalid("BlockDeviceMapping", f"{device} is the instance-store root of this image")
            merged[device] = dict(mapping)
    root = image.root_device_name
    return sorted(merged.values(), key=lambda m: (m["device"] != root, m["device"]))


class Roots:
    """EBS-backed images and instances on top of the EBS engine (`ebs`) and the compute engine."""

    def __init__(self, ebs: Ebs):
        self.ebs, self.compute = ebs, ebs.compute
        self._attached: dict[str, list[Volume]] = {}  # instance id -> its volumes, as of store version:
        self._version = -1

    def _by_instance(self) -> dict[str, list[Volume]]:
        store = self.ebs.store
        if self._version != store.version:
            index: dict[str, list[Volume]] = {}
            for volume in store.volumes.values():
                if volume.instance_id:
                    index.setdefault(volume.instance_id, []).append(volume)
            self._attached, self._version = index, store.version
        return self._attached

    # --- images -------------------------------------------------------------------------------------------
    def check_image_mappings(
        self, principal: Any, root_device_name: str, mappings: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """RegisterImage's mappings: snapshots the caller may use, sizes at least theirs; the root must be one."""
        mappings = [m for m in mappings if not m.get("no_device")]
        root = next((m for m in mappings if m["device"] == root_device_name), None)
        if root is None or not root["snapshot_id"]:
            raise invalid("BlockDeviceMapping", f"the root device {root_device_name} needs an EBS snapshot")
        for mapping in mappings:
            if not mapping["snapshot_id"]:
                continue
            snapshot = self.ebs.snapshot(mapping["snapshot_id"], principal, restore=True)
            if snapshot.state not in ("completed", "pending"):
                raise ComputeError("IncorrectState", f"Snapshot '{snapshot.snapshot_id}' is {snapshot.state}.")
            if mapping["size"] and mapping["size"] < snapshot.volume_size:
                raise invalid("BlockDeviceMapping", f"{mapping['device']}: smaller than {snapshot.snapshot_id}")
            mapping["snapshot_id"], mapping["size"] = snapshot.snapshot_id, mapping["size"] or snapshot.volume_size
        return mappings

    def image_settled(self, image: Image) -> str | None:
        """An image made by CreateImage becomes available when its snapshots complete (failed if one fails)."""
        if image.reboot_instance_id:
            return None  # its instance is still down for it, or its snapshots not yet taken
        states = [self.ebs.store.snapshots.get(s) for s in image.snapshot_ids]
        if any(s is None or s.state in ("error", "deleting") for s in states):
            return "failed"
        if all(s is not None and s.state == "completed" for s in states):
            return "available"
        return None

    async def settle_images(self) -> None:
        for image in [i for i in self.compute.store.images.values() if i.state == "pending"]:
            if image.reboot_instance_id:
                await self._advance_reboot(image)
            state = self.image_settled(image)
            if state is not None:
                image.state = state
                await self.compute.store.save_image(image)
                log.info("%s: %s", image.image_id, state)

    # --- launches -----------------------------------------------------------------------------------------
    def mappings(self, principal: Any, image: Image, requested: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A launch's EBS mappings, checked: the image's snapshots (usable by whoever may launch the image) and
        the caller's own, completed, with sizes at least theirs."""
        merged = merge_mappings(image, requested)
        own = image.snapshot_ids
        for mapping in merged:
            snapshot_id = mapping.get("snapshot_id")
            if not snapshot_id:
                continue
            if snapshot_id in own:
                snapshot = self.ebs.store.snapshots.get(snapshot_id)
                if snapshot is None:
                    raise ComputeError("InvalidSnapshot.NotFound", f"The image's snapshot '{snapshot_id}' is gone.")
            else:
                snapshot = self.ebs.snapshot(snapshot_id, principal, restore=True)
            if snapshot.state != "completed":
                raise ComputeError("IncorrectState", f"Snapshot '{snapshot.snapshot_id}' is {snapshot.state}.")
            if mapping["size"] and mapping["size"] < snapshot.volume_size:
                raise invalid("BlockDeviceMapping", f"{mapping['device']}: smaller than {snapshot.snapshot_id}")
            mapping["snapshot_id"], mapping["size"] = snapshot.snapshot_id, mapping["size"] or snapshot.volume_size
            mapping["trusted"] = snapshot_id in own
        return merged

    async def prepare(self, principal: Any, instances: list[Instance], mappings: list[dict[str, Any]]) -> None:
        """Make each instance's volumes (recorded attached to it) and wait until the zone's storage has them."""
        made: list[Volume] = []
        for instance in instances:
            for mapping in mappings:
                volume = await self.ebs.create_volume(
                    principal,
                    instance.zone,
                    mapping["size"] or None,
                    mapping.get("snapshot_id", ""),
                    boot=BootAttachment(
                        instance.instance_id,
                        mapping["device"],
                        mapping["delete_on_termination"],
                        trusted=bool(mapping.get("trusted")),
                    ),
                )
                made.append(volume)
        deadline = time.monotonic() + VOLUMES_READY_TIMEOUT
        while any(v.state == "creating" for v in made):
            if time.monotonic() > deadline:
                raise ComputeError("InternalError", "The instance's volumes were not made in time", 500)
            self.ebs.wake()
            await asyncio.sleep(0.2)
        failed = next((v for v in made if v.state != "in-use"), None)
        if failed is not None:
            raise ComputeError(
                "InternalError", f"The volume {failed.volume_id} for {failed.device} failed: {failed.detail}", 500
            )

    def boot_volumes(self, instance_ids: list[str]) -> dict[str, list[LaunchVolume]]:
        """The volumes each instance boots with, the root first (for the CC's RunInstances)."""
        index = self._by_instance()
        found: dict[str, list[LaunchVolume]] = {}
        for instance_id in instance_ids:
            instance = self.compute.store.instances.get(instance_id)
            for volume in index.get(instance_id, ()):
                if volume.boot and volume.instance_id == instance_id and volume.attach_state == "attached":
                    root = instance is not None and volume.device == instance.root_device_name
                    found.setdefault(instance_id, []).append(
                        LaunchVolume(volume_id=volume.volume_id, device=volume.device, root=root)
                    )
        for volumes in found.values():
            volumes.sort(key=lambda v: (not v.root, v.device))
        return found

    def with_volumes(self) -> Collection[str]:
        """The ids of the instances that have volumes attached (`devices` finds none for the others)."""
        return self._by_instance().keys()

    def devices(self, instance: Instance) -> list[Volume]:
        """The volumes attached to an instance (for DescribeInstances' BlockDeviceMappings), by device."""
        attached = self._by_instance().get(instance.instance_id)
        if not attached:  # most instances (instance-store): asked for each one of a DescribeInstances
            return []
        found = [v for v in attached if v.instance_id == instance.instance_id]
        return sorted(found, key=lambda v: (v.device != instance.root_device_name, v.device))

    def metadata(self, instance: Instance) -> dict[str, Any]:
        """The metadata service's block-device-mapping/ with the instance's `ebsN` entries: the volumes it launched
        or last started with (hot-attached ones appear from its next start, as in EC2)."""
        booted = [v.device for v in self.devices(instance) if v.boot and v.attach_state == "attached"]
        if not booted:
            return {}
        return {"block-device-mapping": block_device_mapping(instance, booted)}

    def has_root(self, instance: Instance) -> bool:
        return any(v.device == instance.root_device_name and v.attach_state for v in self.devices(instance))

    # --- CreateImage --------------------------------------------------------------------------------------
    def imaging(self, instance_id: str) -> bool:
        """The instance is down for a CreateImage (started again by it once the image's snapshots are taken)."""
        return any(
            i.reboot_instance_id == instance_id and i.state == "pending" for i in self.compute.store.images.values()
        )

    def rebooting(self) -> bool:
        return any(i.reboot_instance_id and i.state == "pending" for i in self.compute.store.images.values())

    async def create_image(
        self,
        principal: Any,
        instance_id: str,
        name: str,
        description: str,
        mappings: list[dict[str, Any]],
        no_reboot: bool = False,
    ) -> Image:
        """EC2's CreateImage. A running instance is, unless `no_reboot`, stopped first and started again once its
        volumes' snapshots are taken (EC2 shuts it down and reboots it), so the image is of disks no guest writes
        to while they are read; with `no_reboot` they are read as the guest runs. The steps after the answer are
        `_advance_reboot`'s, driven by the image record (`reboot_instance_id`, written before the stop)."""
        instance = self.compute.instance(instance_id, principal)
        if instance.root_device_type != "ebs":
            raise ComputeError(
                "InvalidParameterValue", f"The instance '{instance.instance_id}' is not an EBS-backed instance."
            )
        if instance.state not in ("running", "stopped", "stopping"):
            raise ComputeError("IncorrectInstanceState", f"The instance '{instance.instance_id}' is {instance.state}.")
        images = self.compute.images
        if images is None:
            raise ComputeError("Unavailable", "The image registry is not ready", 503)
        images.check_name(principal.account_id, name, description)
        suppressed = {m["device"] for m in mappings if m.get("no_device")}
        if instance.root_device_name in suppressed:
            raise invalid("BlockDeviceMapping", "the root device cannot be suppressed")
        volumes = [v for v in self.devices(instance) if v.device not in suppressed and v.state in ("in-use",)]
        if not any(v.device == instance.root_device_name for v in volumes):
            raise ComputeError("IncorrectInstanceState", f"The instance '{instance.instance_id}' has no root volume.")
        if instance.state == "running" and not no_reboot:
            return await self._create_image_rebooting(principal, instance, name, description, volumes)
        block_devices = []
        for volume in volumes:
            snapshot = await self.ebs.create_snapshot(
                principal, volume.volume_id, f"Created by CreateImage({instance.instance_id}) from {volume.volume_id}"
            )
            block_devices.append({
                "device": volume.device,
                "snapshot_id": snapshot.snapshot_id,
                "size": volume.size_gb,
                "delete_on_termination": volume.delete_on_termination,
            })  # fmt: skip
        image = await self._register_from(principal, instance, name, description, block_devices)
        state = self.image_settled(image)
        if state is not None:
            image.state = state
            await self.compute.store.save_image(image)
        return image

    async def _create_image_rebooting(
        self, principal: Any, instance: Instance, name: str, description: str, volumes: list[Volume]
    ) -> Image:
        """The image recorded `pending` with its snapshots named (not yet taken) and the instance to reboot, then
        the instance stopped; `_advance_reboot` takes the snapshots once it is stopped and starts it again."""
        block_devices = [
            {"device": v.device, "snapshot_id": self.ebs.new_snapshot_id(), "size": v.size_gb,
             "delete_on_termination": v.delete_on_termination}
            for v in volumes
        ]  # fmt: skip
        image = await self._register_from(
            principal, instance, name, description, block_devices, reboot_instance_id=instance.instance_id
        )  # written before the instance is stopped
        await self.compute.stop_start.stop_now([instance], REBOOT_REASON)
        self.ebs.wake()
        log.info("%s: CreateImage %s: stopping it for its snapshots", instance.instance_id, image.image_id)
        return image

    async def _register_from(
        self,
        principal: Any,
        instance: Instance,
        name: str,
        description: str,
        block_devices: list[dict[str, Any]],
        reboot_instance_id: str = "",
    ) -> Image:
        """CreateImage's image of `instance`, recorded `pending` (it settles once its snapshots have)."""
        images = self.compute.images
        assert images is not None
        return await images.register_ebs(
            principal.account_id,
            name,
            description=description,
            kernel_id=instance.kernel_id,
            ramdisk_id=instance.ramdisk_id,
            root_device_name=instance.root_device_name,
            block_devices=block_devices,
            state="pending",
            reboot_instance_id=reboot_instance_id,
        )

    async def _advance_reboot(self, image: Image) -> None:
        """One step of a CreateImage reboot, level-triggered (a crash anywhere resumes here): once the instance is
        stopped, its volumes' snapshots are taken under the image's names; once none is pending any more, the
        instance is started again and the image settles as any other (available, or failed if a snapshot failed)."""
        store = self.compute.store
        instance = store.instances.get(image.reboot_instance_id)
        snapshots = self.ebs.store.snapshots
        missing = [m for m in image.block_devices if m["snapshot_id"] not in snapshots]
        if missing:
            if instance is None or instance.state in ("terminated", "shutting-down"):
                log.warning("%s: its instance %s ended before its snapshots", image.image_id, image.reboot_instance_id)
                image.reboot_instance_id, image.state = "", "failed"
                await store.save_image(image)
                return
            if instance.state == "running":  # the CLC stopped between writing the image and the stop: stop now
                await self.compute.stop_start.stop_now([instance], REBOOT_REASON)
            if instance.state != "stopped":
                return  # still stopping
            attached = {v.device: v for v in self.devices(instance)}
            for mapping in missing:
                volume = attached.get(mapping["device"])
                try:
                    if volume is None:
                        raise ComputeError("IncorrectState", f"no volume at {mapping['device']} any more")
                    await self.ebs.snapshot_volume(
                        volume,
                        f"Created by CreateImage({instance.instance_id}) from {volume.volume_id}",
                        mapping["snapshot_id"],
                    )
                except ComputeError as err:
                    log.warning("%s: snapshot of %s: %s", image.image_id, mapping["device"], err.message)
                    image.reboot_instance_id, image.state = "", "failed"
                    await store.save_image(image)
                    return  # the instance stays stopped, as after a failed start
            return
        if any(snapshots[m["snapshot_id"]].state == "pending" for m in image.block_devices):
            return  # read while the instance is down
        if instance is not None and instance.state == "stopped":
            try:
                await self.compute.stop_start.start_now(instance)
            except ComputeError as err:
                log.warning("%s: starting it again after CreateImage: %s (will retry)", instance.instance_id, err)
                return
            log.info("%s: started again after the snapshots of %s", instance.instance_id, image.image_id)
        image.reboot_instance_id = ""
        await store.save_image(image)
