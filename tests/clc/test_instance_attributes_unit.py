"""The attributes EC2 changes only on a stopped instance (instanceType, userData, kernel, ramdisk), on the compute
engine alone with its real database: applied to the record the next start launches from, and kept across a
restart. (Instances reach `stopped` through the EBS issue's StopInstances; here the record is put in that state.)"""

from __future__ import annotations

import asyncio
import base64
import time
from types import SimpleNamespace

import pytest

from services.cloud_controller.compute.attributes import Attributes
from services.cloud_controller.compute.errors import ComputeError
from services.cloud_controller.compute.store import Image
from tests.clc.test_instances_state_unit import engine, launch

OWNER = "111111111111"
PRINCIPAL = SimpleNamespace(account_id=OWNER, user_id="u-1", is_admin=False)


def test_stopped_instance_attributes_apply_and_persist(tmp_path) -> None:
    async def scenario() -> None:
        compute = await engine(tmp_path)
        for image_id, kind in (("emi-00000001", "machine"), ("eki-00000002", "kernel"), ("eri-00000003", "ramdisk")):
            image = Image(image_id, OWNER, kind, image_id, f"b/{image_id}.manifest.xml", time.time())
            if kind == "machine":
                image.kernel_id, image.ramdisk_id = "eki-00000002", "eri-00000003"
            await compute.store.save_image(image, new=True)
        (instance,) = await launch(compute, 1, OWNER)
        attributes = Attributes(compute)
        instance.state = "running"
        with pytest.raises(ComputeError) as refused:
            await attributes.modify(PRINCIPAL, instance.instance_id, "instanceType", "c1.medium")
        assert refused.value.code == "IncorrectInstanceState"
        instance.state = "stopped"
        await attributes.modify(PRINCIPAL, instance.instance_id, "instanceType", "c1.medium")
        large = compute.vm_type("c1.medium")
        assert (instance.vm_type, instance.cores, instance.memory_mb) == ("c1.medium", large.cores, large.memory_mb)
        await attributes.modify(PRINCIPAL, instance.instance_id, "userData", b"#!/bin/sh\necho again\n")
        await attributes.modify(PRINCIPAL, instance.instance_id, "kernel", "eki-00000002")
        await attributes.modify(PRINCIPAL, instance.instance_id, "ramdisk", "eri-00000003")
        for bad, code in (("instanceType", "InvalidParameterValue"), ("kernel", "InvalidAMIID.Malformed")):
            with pytest.raises(ComputeError) as caught:
                await attributes.modify(PRINCIPAL, instance.instance_id, bad, "nope")
            assert caught.value.code == code
        with pytest.raises(ComputeError) as caught:
            await attributes.modify(PRINCIPAL, instance.instance_id, "kernel", "eri-00000003")  # not a kernel
        assert caught.value.code == "InvalidAMIID.NotFound"
        await compute.db.close()

        again = await engine(tmp_path)  # what a restarted CLC (and the next start) sees
        kept = again.store.instances[instance.instance_id]
        assert (kept.vm_type, kept.kernel_id, kept.ramdisk_id) == ("c1.medium", "eki-00000002", "eri-00000003")
        assert base64.b64decode(kept.user_data) == b"#!/bin/sh\necho again\n"
        await Attributes(again).reset(PRINCIPAL, kept.instance_id, "kernel")
        assert kept.kernel_id == "eki-00000002"  # the image's default
        await again.db.close()

    asyncio.run(scenario())
