"""What this node offers: cores, memory and disk from the host and libvirt, capped by MAX_CORES, MAX_MEM and
MAX_DISK. Memory as the reference computed it: KVM/QEMU keep 256 MiB for the host, Xen 32 MiB plus dom0's
minimum (KOALA: 512 MiB assumed). Disk in GB throughout: the free space of INSTANCE_PATH when the NC starts,
plus what its own instances already hold, less the image cache's size.

Allocation ratios (Nova's cpu/ram/disk_allocation_ratio) multiply what the host has before the MAX_* caps: guests
rarely use all of their virtual cores at once, so a node offers more virtual cores than it has. They do not
apply to the test driver's simulated host, whose size is what the simulation says.

On the test hypervisor the host is simulated (scale tests run hundreds of instances on a laptop's disk), so
there MAX_CORES, MAX_MEM and MAX_DISK, when set, are the simulated host's size rather than caps."""

from __future__ import annotations

import os
from pathlib import Path

GIB = 1 << 30
HOST_RESERVE_MB = {"kvm": 256, "qemu": 256, "xen": 32 + 512, "test": 0}


def limits(
    hypervisor: str,
    host_cpus: int,
    host_memory_mb: int,
    instance_path: Path,
    cache_mb: int,
    held_disk_gb: int,
    max_cores: int,
    max_mem: int,
    max_disk: int,
    cpu_ratio: float = 1.0,
    ram_ratio: float = 1.0,
    disk_ratio: float = 1.0,
) -> dict[str, int]:
    stat = os.statvfs(instance_path)
    free_gb = stat.f_bavail * stat.f_frsize // GIB
    disk = max(0, free_gb + held_disk_gb - (cache_mb + 1023) // 1024)
    memory = max(0, host_memory_mb - HOST_RESERVE_MB.get(hypervisor, 0))
    if hypervisor == "test":
        return {
            "cores": max_cores or host_cpus,
            "memory_mb": max_mem or memory,
            "disk_gb": max_disk or disk,
        }
    cores, memory, disk = int(host_cpus * cpu_ratio), int(memory * ram_ratio), int(disk * disk_ratio)
    return {
        "cores": min(cores, max_cores) if max_cores else cores,
        "memory_mb": min(memory, max_mem) if max_mem else memory,
        "disk_gb": min(disk, max_disk) if max_disk else disk,
    }
