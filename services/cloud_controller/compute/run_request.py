"""The CC's RunInstances for instances of one run, built one way for a launch (launch.py, also when it is sent
again after a restart) and for a start of stopped EBS-backed instances (stop_start.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from common.messages.cc_nc import ImageRef, NetConfig, VmType
from common.messages.clc_cc import InstanceLaunch, RunInstancesRequest
from services.cloud_controller.compute.store import Instance

if TYPE_CHECKING:
    from services.cloud_controller.ebs.roots import Roots


def run_request(
    run_id: str,
    instances: list[Instance],
    images: tuple[ImageRef, ImageRef | None, ImageRef | None],
    vm: VmType,
    groups: list[str],
    roots: Roots | None,
    *,
    min_count: int = 1,
    nodes: Sequence[str] = (),
    keep_private_ip: bool = False,
) -> RunInstancesRequest:
    """The request for `instances` (one run: owner, key and user data are the first one's). `nodes`: a placement
    hint per instance, or none; `keep_private_ip`: a start asks for the address the instance had, a launch lets the
    CC choose."""
    image, kernel, ramdisk = images
    first = instances[0]
    volumes = roots.boot_volumes([i.instance_id for i in instances]) if roots is not None else {}
    return RunInstancesRequest(
        reservation_id=run_id,
        owner_id=first.owner_id,
        instances=[
            InstanceLaunch(
                instance_id=i.instance_id,
                launch_index=i.launch_index,
                net=NetConfig(
                    private_mac=i.private_mac,
                    private_ip=i.private_ip if keep_private_ip else "",
                    public_ip=i.public_ip,
                    vlan=i.vlan,
                    network_index=i.network_index,
                ),
                node_id=nodes[n] if nodes else "",
            )
            for n, i in enumerate(instances)
        ],
        min_count=min_count,
        image=image,
        kernel=kernel,
        ramdisk=ramdisk,
        vm_type=vm,
        key_name=first.key_name,
        ssh_public_key=first.key_material,
        user_data=first.user_data,
        group_names=groups,
        boot_volumes=volumes,
    )
