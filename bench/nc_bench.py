"""Node Controller benchmark (JSON on stdout).

1. `launch`: RunInstance with the image already cached -> the domain is running (the NC reports Extant, which it
   does when libvirt says running), against `virsh create` of the same domain XML on the same libvirtd in the
   same run. Target: at most 300 ms overhead (median). Real QEMU (domain type qemu) on qemu:///system; skipped
   when libvirtd is not there.
2. `scale`: 200 instances on libvirt's test driver, all asked for at once: RunInstance -> Extant as pushed to
   the CC (p50, p99), and the NC process's memory (RSS now and peak).

Usage: .venv/bin/python bench/nc_bench.py [--instances 200] [--launches 5] [--skip-qemu]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.messages.cc_nc import ImageRef, InstanceInfo, RunInstanceRequest, VmType  # noqa: E402
from tests.nc.conftest import NcEnv, close_env, make_env  # noqa: E402

SMALL = VmType(name="m1.small", cores=1, memory_mb=128, disk_gb=2)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def nc_memory(env: NcEnv) -> dict[str, float]:
    pid = env.cloud.processes["nc"].pid
    status = Path(f"/proc/{pid}/status").read_text()
    found = {k: int(v) / 1024 for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M)}
    return {"rss_mb": round(found.get("VmRSS", 0), 1), "peak_rss_mb": round(found.get("VmHWM", 0), 1)}


def wait_extant(env: NcEnv, instance_id: str, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = env.describe(instance_id).get(instance_id)
        if info is not None and info.state == "Extant":
            return time.monotonic()
        if info is not None and info.state == "Teardown":
            raise RuntimeError(f"{instance_id} failed: {info.reason}")
        time.sleep(0.005)
    raise RuntimeError(f"{instance_id} not Extant after {timeout} s")


# --- 1. launch latency against virsh create ---------------------------------------------------------------
def bench_launch(launches: int) -> dict:
    probe = subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True)
    if os.geteuid() != 0 or probe.returncode != 0:
        return {"skipped": "needs root and libvirtd (qemu:///system)"}
    build = subprocess.run(["bash", str(REPO / "deploy/guest-image/build.sh")], capture_output=True, text=True)
    if build.returncode != 0:
        return {"skipped": f"guest image build failed: {build.stderr[-500:]}"}
    image_dir = Path(build.stdout.strip().splitlines()[-1])
    instances = Path(f"/var/tmp/koala-nc-bench-{secrets.token_hex(4)}")
    instances.mkdir(mode=0o755)
    tmp = Path(tempfile.mkdtemp(prefix="nc-bench-"))
    settings = {"HYPERVISOR": "qemu", "KOALA_LIBVIRT_URI": "qemu:///system", "INSTANCE_PATH": instances,
                "SWAP_SIZE": 32, "MAX_DISK": 0, "KOALA_NC_MONITOR_SECONDS": 5}  # fmt: skip
    env = make_env(tmp, settings, domains=[])
    try:
        for name, key in (("kernel", "kernel"), ("initrd", "initrd"), ("root.img", "root")):
            env.images.add(f"bucket/guest/{key}.manifest.xml", image_dir / name)

        def request(instance_id: str) -> RunInstanceRequest:
            return RunInstanceRequest(
                instance_id=instance_id, reservation_id="r-0000bench", owner_id="000000000001",
                image=ImageRef(id="emi-0000b001", manifest="bucket/guest/root.manifest.xml"),
                kernel=ImageRef(id="eki-0000b001", manifest="bucket/guest/kernel.manifest.xml"),
                ramdisk=ImageRef(id="eri-0000b001", manifest="bucket/guest/initrd.manifest.xml"),
                vm_type=VmType(name="c1.medium", cores=1, memory_mb=256, disk_gb=1),
            )  # fmt: skip

        # Warm-up: fills the image cache (not timed).
        warm = f"i-{secrets.token_hex(4)}"
        env.cc.call(env.url, "RunInstance", request(warm), InstanceInfo)
        wait_extant(env, warm)
        env.terminate(warm)
        nc_times, virsh_times = [], []
        for _ in range(launches):
            instance_id = f"i-{secrets.token_hex(4)}"
            started = time.monotonic()
            env.cc.call(env.url, "RunInstance", request(instance_id), InstanceInfo)
            nc_times.append(wait_extant(env, instance_id) - started)
            # The baseline: the same XML, disks copied aside, under another name, started with virsh create.
            directory = env.instance_dir(instance_id, "000000000001")
            base = instances / f"baseline-{instance_id}"
            base.mkdir()
            xml = (directory / "libvirt.xml").read_text()
            for disk in ("root.qcow2", "ephemeral.qcow2", "ephemeral.img", "swap.img", "config.iso"):
                if (directory / disk).exists():
                    subprocess.run(["cp", "--sparse=always", str(directory / disk), str(base / disk)], check=True)
            env.terminate(instance_id)
            name = f"bench-{secrets.token_hex(4)}"
            xml = xml.replace(str(directory), str(base)).replace(f"<name>{instance_id}</name>", f"<name>{name}</name>")
            xml = re.sub(r"<uuid>[^<]+</uuid>", "", xml)
            (base / "domain.xml").write_text(xml)
            started = time.monotonic()
            subprocess.run(["virsh", "-c", "qemu:///system", "create", str(base / "domain.xml")], check=True,
                           capture_output=True)  # fmt: skip
            virsh_times.append(time.monotonic() - started)
            subprocess.run(["virsh", "-c", "qemu:///system", "destroy", name], capture_output=True)
            shutil.rmtree(base, ignore_errors=True)
        nc_median, virsh_median = statistics.median(nc_times), statistics.median(virsh_times)
        return {
            "launches": launches,
            "nc_run_to_running_ms": {"median": round(nc_median * 1000, 1), "all": [round(t * 1000) for t in nc_times]},
            "virsh_create_ms": {"median": round(virsh_median * 1000, 1), "all": [round(t * 1000) for t in virsh_times]},
            "overhead_ms": round((nc_median - virsh_median) * 1000, 1),
            "ratio": round(nc_median / virsh_median, 2),
            "target_overhead_ms": 300,
            "within_target": (nc_median - virsh_median) * 1000 <= 300,
        }
    finally:
        close_env(env)
        shutil.rmtree(instances, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


# --- 2. 200 instances on the test driver -------------------------------------------------------------------
def bench_scale(count: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="nc-bench-scale-"))
    env = make_env(tmp, {"KOALA_NC_MONITOR_SECONDS": 5, "SWAP_SIZE": 64, "CONCURRENT_DISK_OPS": 4}, domains=[])
    try:
        manifest = env.image("scale", size=8 << 20)
        idle = nc_memory(env)
        ids = [f"i-5ca1{n:04x}" for n in range(count)]
        started: dict[str, float] = {}
        errors: list[str] = []

        def launch(chunk: list[str]) -> None:
            for instance_id in chunk:
                started[instance_id] = time.monotonic()
                try:
                    env.run(instance_id, image="emi-00005ca1", manifest=manifest, vm_type=SMALL)
                except Exception as err:
                    errors.append(f"{instance_id}: {err}")

        began = time.monotonic()
        threads = [threading.Thread(target=launch, args=(ids[i::8],)) for i in range(8)]  # 8 concurrent callers
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        deadline = time.monotonic() + 600
        extant: dict[str, float] = {}
        while len(extant) < count - len(errors) and time.monotonic() < deadline:
            for when, instance_id, state in list(env.recorder.arrivals):
                if state == "Extant" and instance_id not in extant:
                    extant[instance_id] = when
            time.sleep(0.05)
        total = time.monotonic() - began
        busy = nc_memory(env)
        latencies = [extant[i] - started[i] for i in extant if i in started]
        teardown = [i for i, info in env.describe().items() if info.state == "Teardown"]
        for instance_id in ids:
            env.terminate(instance_id)
        return {
            "instances": count,
            "extant": len(extant),
            "failed": len(teardown) + len(errors),
            "run_to_extant_ms": {
                "p50": round(percentile(latencies, 50) * 1000, 1),
                "p99": round(percentile(latencies, 99) * 1000, 1),
                "max": round(max(latencies) * 1000, 1),
            },
            "all_extant_after_s": round(total, 2),
            "nc_memory_idle": idle,
            "nc_memory_with_instances": busy,
            "concurrent_disk_ops": 4,
        }
    finally:
        close_env(env)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--launches", type=int, default=5)
    parser.add_argument("--skip-qemu", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    args = parser.parse_args()
    result = {"benchmark": "node_controller"}
    result["launch"] = {"skipped": "--skip-qemu"} if args.skip_qemu else bench_launch(args.launches)
    result["scale"] = {"skipped": "--skip-scale"} if args.skip_scale else bench_scale(args.instances)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
