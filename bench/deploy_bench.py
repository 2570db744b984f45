"""Deployment figures (issue 10), printed as JSON on stdout (progress on stderr).

1. `cold_start`: the README's first command on a machine whose packages are already installed,
   `deploy/bootstrap.sh && koala up --detach --state-dir <fresh dir>`, until a RunInstances call with the admin's
   credentials (DIR/eucarc, the machine image from DIR/images.json) is accepted. A fresh state directory each time,
   so everything starts from nothing: PKI, configurations, the four services, and the guest image bundled, uploaded
   and registered from the image build cache. Target: at most 60 s. Phases: bootstrap, koala up, first RunInstances
   accepted. Same-run baseline: `koala up --detach --no-image` on another fresh directory (the four services
   becoming healthy and the admin's eucarc written), so the report shows what the image steps add. Also `again`:
   `koala up --detach` on the already-initialised directory after `koala down` (the "running it again reuses the
   state" path: no PKI, no image build or upload, the images.json ids checked with DescribeImages).
2. `guest_boot`: RunInstances -> SSH answering in the guest (QEMU software emulation, image cached) in the
   acceptance test's world (the CC's MANAGED-NOVLAN router in its own namespace, public addresses seen from a
   "pub" namespace, the metadata link to the CLC), against booting the same guest (same kernel, initrd and root
   image from the build cache, same memory and vcpus as c1.medium) by hand: `virsh create` of a minimal domain
   XML, root disk a qcow2 overlay on a copy of the image, a NoCloud config drive (cidata) with the key, a tap on a
   bridge made here, dnsmasq in a namespace on that bridge giving the guest's MAC a fixed address, and a static
   metadata server (169.254.169.254, python's http.server) in that namespace so the guest takes the same metadata
   path as under Koala rather than waiting on absent metadata. Both are timed until an SSH command (asyncssh, from
   tests/acceptance/ssh_probe.py, in the client's namespace) answers on the guest's address; the console is polled
   at the same interval on both sides. Koala and by-hand boots alternate, so both see the same machine load.
   Every Koala guest is launched in the same security group, as a user would, so each gets the private address
   of the one before it (a reused address must be leased to the new MAC at once).

Issue 14 adds: `koala up` now builds the cloud's MANAGED-NOVLAN network (router namespace, the one host link,
and the cloud's own libvirtd in the namespace), so the cold start is also measured with other commits' code,
each checked out in a temporary git worktree and run with this venv, alternating with this tree's, each on a
fresh state directory and its own free ports: `--baseline-ref` (default the main commit before `koala up` built
any network: the brief's 8.8 s figure, target at most 1.2x) and `--previous-ref` (default the main commit before
the cloud ran its own libvirtd, when the host still had the bridge, a veth and a route). `guest_boot` runs on
`koala up`'s own network by default (`--koala-world up`): RunInstances -> SSH from the host into the guest's
public address, the user's path; the by-hand guest is then created with `virsh create` on the cloud's own
libvirtd, its bridge, dnsmasq and metadata server in the cloud's router namespace (the same daemon and namespace
as the cloud's guests; target at most 1.1x).

Needs root and libvirtd with QEMU (deploy/bootstrap.sh). Every `koala up` here takes free ports (--port-base)
and its own state directory, so other clouds on the machine do not matter. Everything made here (state
directories, services, domains, bridges, namespaces, dnsmasq, files under /var/tmp) is removed at the end, also
on failure or Ctrl-C.
Traffic goes only to loopback and to namespaces made here.

    .venv/bin/python bench/deploy_bench.py [--repeat 3] [--guest-repeat N] [--skip-cold] [--skip-guest]
        [--baseline-ref REF] [--previous-ref REF] [--koala-world up|acceptance]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import boto3  # noqa: E402
from botocore.exceptions import BotoCoreError, ClientError  # noqa: E402

from services.cloud_controller.identity.credentials import parse_eucarc  # noqa: E402

KOALA = [sys.executable, "-m", "cli"]  # run with cwd and PYTHONPATH at the code measured (this tree or a baseline)
BASELINE_REF = "574d375^"  # main just before `koala up` built the MANAGED-NOVLAN network (issue 14)
# main just before the cloud ran its own libvirtd in the router namespace (the host had the bridge, a veth, a route)
PREVIOUS_REF = "0f0a36c"
SSH_PROBE = REPO / "tests" / "acceptance" / "ssh_probe.py"
HOST_LIBVIRT = "qemu:///system"  # the host's libvirtd: the baseline's clouds and `--network system` use it
TARGET_S = 60.0
POLL_S = 0.25  # console and state polling, the same on both sides of the guest comparison
BASE_NET = "10.219.0"  # the by-hand guest's network


def log(message: str) -> None:
    print(f"[deploy_bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sh(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {(result.stderr or result.stdout)[-1500:]}")
    return result


def summary(values: list[float]) -> dict:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "all": [round(v, 2) for v in values],
    }


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = POLL_S) -> float:
    """Poll until predicate() is true; return the monotonic time it first was."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def ec2_client(creds: dict[str, str]):
    return boto3.client(
        "ec2", endpoint_url=creds["EC2_URL"], region_name="eucalyptus",
        aws_access_key_id=creds["EC2_ACCESS_KEY"], aws_secret_access_key=creds["EC2_SECRET_KEY"],
    )  # fmt: skip


def libvirt_uri(state: Path) -> str:
    """The libvirtd a cloud's NC uses: its own in the router namespace (this tree), else the host's."""
    from common.config import parse_conf

    conf = state / "conf" / "nc.conf"
    setting = parse_conf(conf.read_text()).get("KOALA_LIBVIRT_URI") if conf.exists() else None
    return setting.value if setting is not None else HOST_LIBVIRT


def domains(uri: str) -> list[str]:
    return sh("virsh", "-c", uri, "list", "--all", "--name", check=False).stdout.split()


def destroy_domains(names: list[str], uri: str) -> None:
    """Safety net: never leave a guest of ours running."""
    for name in set(names) & set(domains(uri)):
        sh("virsh", "-c", uri, "destroy", name, check=False)
        sh("virsh", "-c", uri, "undefine", name, check=False)


def make_workdir(prefix: str) -> Path:
    """A directory under /var/tmp that libvirt's qemu user can read (guests' disks live below it)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    path.chmod(0o755)
    return path


# --- 1. cold start of the all-in-one cloud --------------------------------------------------------------------
def koala(code: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`koala ARGS` with the code in `code` (this tree, or a baseline worktree)."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    return subprocess.run([*KOALA, *args], capture_output=True, text=True, timeout=timeout, cwd=code, env=env)


def free_port_base() -> int:
    from tests.harness import free_port_run

    return free_port_run(4)


def koala_up(code: Path, state: Path, *extra: str) -> float:
    started = time.monotonic()
    result = koala(code, "up", "--detach", "--state-dir", str(state), *extra)
    if result.returncode:
        raise RuntimeError(f"koala up {' '.join(extra)} failed: {result.stderr[-2000:]}")
    return time.monotonic() - started


def koala_down(code: Path, state: Path, purge: bool = False) -> float:
    started = time.monotonic()
    koala(code, "down", "--state-dir", str(state), *(["--purge"] if purge else []), timeout=300)
    return time.monotonic() - started


def purges(code: Path) -> bool:
    """Whether that code's `koala down` knows --purge (the baseline's does not, and builds no network)."""
    return "--purge" in koala(code, "down", "--help").stdout


def first_run_instances(state: Path) -> tuple[float, int, list[str]]:
    """RunInstances with the admin's credentials, retried until accepted; (seconds, attempts, instance ids)."""
    ec2 = ec2_client(parse_eucarc(state / "eucarc"))
    machine = json.loads((state / "images.json").read_text())["machine"]
    started, attempts = time.monotonic(), 0
    while True:
        attempts += 1
        try:
            answer = ec2.run_instances(ImageId=machine, MinCount=1, MaxCount=1, InstanceType="m1.small")
            return time.monotonic() - started, attempts, [i["InstanceId"] for i in answer["Instances"]]
        except (ClientError, BotoCoreError) as err:
            if time.monotonic() - started > 60:
                raise RuntimeError(f"RunInstances not accepted after 60 s: {err}") from None
            time.sleep(0.2)


def terminate_and_wait(state: Path, ids: list[str]) -> None:
    ec2 = ec2_client(parse_eucarc(state / "eucarc"))
    ec2.terminate_instances(InstanceIds=ids)

    def gone() -> bool:
        found = ec2.describe_instances(InstanceIds=ids)["Reservations"]
        states = [i["State"]["Name"] for r in found for i in r["Instances"]]
        return all(s == "terminated" for s in states) and not set(ids) & set(domains(uri))

    uri = libvirt_uri(state)

    wait_for(gone, 120, f"{ids} terminated and their domains gone")


def cold_start_once(code: Path, root: Path, bootstrap: bool = True) -> dict:
    state = root / "state"
    ids: list[str] = []
    purge = purges(code)
    uri = HOST_LIBVIRT
    try:
        started = time.monotonic()
        if bootstrap:
            sh("bash", str(code / "deploy" / "bootstrap.sh"), timeout=600)
        booted = time.monotonic() - started
        up = koala_up(code, state, "--port-base", str(free_port_base()))
        uri = libvirt_uri(state)
        run, attempts, ids = first_run_instances(state)
        total = time.monotonic() - started
        stopping = time.monotonic()
        terminate_and_wait(state, ids)
        log(f"the first instance terminated and its domain gone in {time.monotonic() - stopping:.1f} s (not timed)")
        down = koala_down(code, state)
        again = koala_up(code, state)  # the same state directory: reuses PKI, configuration and registered images
        return {"total": total, "bootstrap": booted, "koala_up": up, "first_run_instances": run,
                "run_attempts": attempts, "again": again, "down": down}  # fmt: skip
    finally:
        destroy_domains(ids, uri)
        koala_down(code, state, purge=purge)
        shutil.rmtree(root, ignore_errors=True)


def services_only_once(code: Path, root: Path) -> float:
    state = root / "state"
    try:
        return koala_up(code, state, "--no-image", "--port-base", str(free_port_base()))
    finally:
        koala_down(code, state, purge=purges(code))
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def baseline_tree(ref: str):
    """`ref` checked out in a temporary worktree (removed afterwards)."""
    path = make_workdir("koala-deploy-base-")
    path.rmdir()
    sh("git", "-C", str(REPO), "worktree", "add", "--detach", str(path), ref)
    try:
        yield path
    finally:
        sh("git", "-C", str(REPO), "worktree", "remove", "--force", str(path), check=False)
        shutil.rmtree(path, ignore_errors=True)


def cli_help_times(code: Path, repeat: int = 10) -> list[float]:
    """`koala --help` wall times (a fresh python each time, as the user's shell runs it)."""
    times = []
    for _ in range(repeat):
        started = time.monotonic()
        koala(code, "--help")
        times.append(time.monotonic() - started)
    return times


def bench_cold_start(repeat: int, baseline_ref: str, previous_ref: str = "") -> dict:
    runs, baseline, old_runs, previous_runs = [], [], [], []
    with contextlib.ExitStack() as trees:
        old = trees.enter_context(baseline_tree(baseline_ref))
        previous = trees.enter_context(baseline_tree(previous_ref)) if previous_ref else None
        help_now, help_old = cli_help_times(REPO), cli_help_times(old)
        log(f"koala --help: {statistics.median(help_now):.2f} s, baseline {statistics.median(help_old):.2f} s")
        for n in range(repeat):  # this tree and the baselines alternate, so all see the same machine load
            runs.append(cold_start_once(REPO, make_workdir("koala-deploy-cold-")))
            log(f"cold start {n + 1}/{repeat}: {runs[-1]['total']:.1f} s (koala up {runs[-1]['koala_up']:.1f} s)")
            old_runs.append(cold_start_once(old, make_workdir("koala-deploy-old-"), bootstrap=False))
            log(f"baseline {baseline_ref} {n + 1}/{repeat}: koala up {old_runs[-1]['koala_up']:.1f} s")
            if previous is not None:
                previous_runs.append(cold_start_once(previous, make_workdir("koala-deploy-prev-"), bootstrap=False))
                log(f"previous {previous_ref} {n + 1}/{repeat}: koala up {previous_runs[-1]['koala_up']:.1f} s")
            baseline.append(services_only_once(REPO, make_workdir("koala-deploy-noimg-")))
            log(f"koala up --no-image {n + 1}/{repeat}: {baseline[-1]:.1f} s")
    total = [r["total"] for r in runs]
    up_now = statistics.median(r["koala_up"] for r in runs)
    up_old = statistics.median(r["koala_up"] for r in old_runs)
    result = {
        "repeat": repeat,
        "command": "deploy/bootstrap.sh && koala up --detach --state-dir <fresh> ; RunInstances accepted",
        "total_s": summary(total),
        "target_s": TARGET_S,
        "within_target": statistics.median(total) <= TARGET_S,
        "phases_s": {
            phase: summary([r[phase] for r in runs]) for phase in ("bootstrap", "koala_up", "first_run_instances")
        },
        "run_instances_attempts": [r["run_attempts"] for r in runs],
        "baseline_ref": baseline_ref,
        "baseline_koala_up_s": summary([r["koala_up"] for r in old_runs]),
        "baseline_first_run_instances_s": summary([r["first_run_instances"] for r in old_runs]),
        "ratio_koala_up_over_baseline": round(up_now / up_old, 2),
        "koala_up_target_ratio": 1.2,
        "baseline_koala_up_no_image_s": summary(baseline),
        "image_steps_add_s": round(up_now - statistics.median(baseline), 2),
        "koala_up_again_same_state_s": summary([r["again"] for r in runs]),
        "koala_down_s": summary([r["down"] for r in runs]),
        "koala_help_s": summary(help_now),
        "baseline_koala_help_s": summary(help_old),
        "koala_help_target_s": 0.3,
    }
    if previous_runs:
        up_previous = statistics.median(r["koala_up"] for r in previous_runs)
        result["previous_ref"] = previous_ref
        result["previous_koala_up_s"] = summary([r["koala_up"] for r in previous_runs])
        result["ratio_koala_up_over_previous"] = round(up_now / up_previous, 2)
    return result


# --- 2. RunInstances -> SSH, against virsh create by hand ------------------------------------------------------
class KoalaWorld:
    """The acceptance test's world (tests/acceptance/world.py)."""

    def __init__(self, work: Path):
        self.work = work
        self.instances = make_workdir("koala-deploy-guests-")
        self.stack = contextlib.ExitStack()
        self.cloud = None
        self.launched: list[str] = []
        self.uri = HOST_LIBVIRT

    def start(self) -> None:
        from tests.acceptance.world import acceptance_world

        world = self.stack.enter_context(acceptance_world(self.work, self.instances, prefix="kd"))
        self.cloud, self.topology = world.cloud, world.topology
        self.client_netns = self.topology.ns("pub")
        self.ec2 = ec2_client(self.cloud.admin_credentials())
        from cli.guest_image import ensure_registered

        self.images = ensure_registered(self.cloud.dir, self.cloud.aio.admin_eucarc_source(), log=log)
        key = self.ec2.create_key_pair(KeyName="bench")
        self.key_file = self.work / "koala-key.pem"
        self.key_file.write_text(key["KeyMaterial"])
        self.key_file.chmod(0o600)
        self.ec2.create_security_group(GroupName="ssh", Description="ssh from anywhere")
        self.ec2.authorize_security_group_ingress(GroupName="ssh", IpProtocol="tcp", FromPort=22, ToPort=22,
                                                  CidrIp="0.0.0.0/0")  # fmt: skip

    def instance(self, instance_id: str) -> dict:
        found = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        return next((i for r in found for i in r["Instances"]), {})

    def console(self, instance_id: str) -> str:
        return self.ec2.get_console_output(InstanceId=instance_id).get("Output", "") or ""

    def capacity(self) -> tuple[int, int]:
        zones = self.ec2.describe_availability_zones(ZoneNames=["verbose"])["AvailabilityZones"]
        row = next(z["State"] for z in zones if z["ZoneName"] == "|- c1.medium")
        free, _, most = row.split()[:3]
        return int(free), int(most)

    def boot(self) -> dict:
        wait_for(lambda: self.capacity()[0] == self.capacity()[1] > 0, 90, "the zone's capacity free")
        started = time.monotonic()
        answer = self.ec2.run_instances(ImageId=self.images["machine"], MinCount=1, MaxCount=1, KeyName="bench",
                                        SecurityGroups=["ssh"], InstanceType="c1.medium")  # fmt: skip
        accepted = time.monotonic()
        instance_id = answer["Instances"][0]["InstanceId"]
        self.launched.append(instance_id)
        try:
            running = wait_for(lambda: self.instance(instance_id).get("State", {}).get("Name") == "running", 180,
                               f"{instance_id} running")  # fmt: skip
            line = f"KOALA-GUEST ready instance={instance_id}"
            ready = wait_for(lambda: line in self.console(instance_id), 240, f"{line} on the console")
            public_ip = self.instance(instance_id).get("PublicIpAddress", "")
            try:
                answered = ssh_until_answers(self.client_netns, public_ip, self.key_file, instance_id)
            except RuntimeError as err:
                raise RuntimeError(f"{err}\n{self.diagnose(instance_id)}") from None
            source = "metadata" if "source=metadata" in self.console(instance_id) else "other"
        finally:
            self.terminate(instance_id)
        return {
            "total": answered - started, "run_instances_call": accepted - started, "to_running": running - accepted,
            "running_to_console_ready": ready - running, "console_ready_to_ssh": answered - ready, "source": source,
        }  # fmt: skip

    def diagnose(self, instance_id: str) -> str:
        """What the router and the client see, for a failure report."""
        topology = self.topology
        parts = [
            f"instance: {json.dumps(self.instance(instance_id), default=str)[:1500]}",
            "router addresses:\n" + topology.run("rtr", "ip", "-br", "addr", check=False).stdout,
            "client neighbours:\n" + topology.run("pub", "ip", "neigh", check=False).stdout,
            "router nat:\n" + topology.run("rtr", "iptables-save", "-t", "nat", check=False).stdout[-3000:],
            "console:\n" + self.console(instance_id)[-1500:],
        ]
        for leases in self.cloud.dir.rglob("dnsmasq.leases"):
            parts.append(f"{leases}:\n{leases.read_text()}")
        for hosts in self.cloud.dir.rglob("dhcp-hosts"):
            parts.append(f"{hosts}:\n{hosts.read_text()}")
        return "\n".join(parts)

    def terminate(self, instance_id: str) -> None:
        self.ec2.terminate_instances(InstanceIds=[instance_id])
        wait_for(lambda: self.instance(instance_id).get("State", {}).get("Name") == "terminated", 120,
                 f"{instance_id} terminated")  # fmt: skip
        wait_for(lambda: instance_id not in domains(self.uri), 60, f"{instance_id}'s domain gone")
        wait_for(lambda: not self.instance_files(instance_id), 60, f"{instance_id}'s files gone")

    def instance_files(self, instance_id: str) -> list[Path]:
        return list(self.instances.rglob(f"{instance_id}*"))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.cloud is not None and self.launched:
                self.ec2.terminate_instances(InstanceIds=self.launched)
        destroy_domains(self.launched, self.uri)
        self.stack.close()  # the cloud, the links, the namespaces
        shutil.rmtree(self.instances, ignore_errors=True)


class KoalaUpWorld(KoalaWorld):
    """The cloud as `koala up` makes it (its own MANAGED-NOVLAN network); SSH from the host, as the user does."""

    def start(self) -> None:
        self.state = self.instances / "up"  # below /var/tmp: libvirt's qemu user reaches the disks
        koala_up(REPO, self.state, "--port-base", str(free_port_base()))
        self.stack.callback(lambda: koala_down(REPO, self.state, purge=True))
        self.cloud = True
        self.uri = libvirt_uri(self.state)  # the cloud's own libvirtd, in its router namespace
        network = json.loads((self.state / "network.json").read_text())
        self.router_netns = f"koala-{network['tag']}"
        self.client_netns = ""  # the host itself
        self.ec2 = ec2_client(parse_eucarc(self.state / "eucarc"))
        self.images = json.loads((self.state / "images.json").read_text())
        key = self.ec2.create_key_pair(KeyName="bench")
        self.key_file = self.work / "koala-key.pem"
        self.key_file.write_text(key["KeyMaterial"])
        self.key_file.chmod(0o600)
        self.ec2.create_security_group(GroupName="ssh", Description="ssh from anywhere")
        self.ec2.authorize_security_group_ingress(GroupName="ssh", IpProtocol="tcp", FromPort=22, ToPort=22,
                                                  CidrIp="0.0.0.0/0")  # fmt: skip

    def instance_files(self, instance_id: str) -> list[Path]:
        return list((self.state / "data").rglob(f"{instance_id}*"))

    def diagnose(self, instance_id: str) -> str:
        return (
            f"instance: {json.dumps(self.instance(instance_id), default=str)[:1500]}\n"
            + self.console(instance_id)[-1500:]
        )


def ssh_until_answers(netns: str, address: str, key_file: Path, expected: str) -> float:
    """ssh_probe.py in `netns` (or on the host when "") until `hostname` answers `expected`; the time it did."""
    deadline = time.monotonic() + 120
    inside = ["ip", "netns", "exec", netns] if netns else []
    while True:
        probe = sh(*inside, sys.executable, str(SSH_PROBE), address, str(key_file), "hostname",
                   check=False)  # fmt: skip
        if probe.returncode == 0 and probe.stdout.strip() == expected:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise RuntimeError(f"no SSH answer from {address}: {probe.stdout[-300:]} {probe.stderr[-500:]}")
        time.sleep(POLL_S)


def probe_startup() -> float:
    """What the SSH probe costs before it sends a packet (a python process importing asyncssh), on both sides."""
    started = time.monotonic()
    sh(sys.executable, "-c", "import asyncssh")
    return round(time.monotonic() - started, 2)


DOMAIN_XML = """<domain type="qemu">
  <name>{name}</name>
  <memory unit="MiB">{memory_mb}</memory>
  <vcpu>{vcpus}</vcpu>
  <os>
    <type arch="x86_64" machine="pc">hvm</type>
    <kernel>{dir}/kernel</kernel>
    <initrd>{dir}/initrd</initrd>
    <cmdline>root=/dev/vda console=ttyS0 koala.instance={name}</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type="file" device="disk">
      <driver name="qemu" type="qcow2"/>
      <source file="{dir}/root.qcow2"/>
      <target dev="vda" bus="virtio"/>
    </disk>
    <disk type="file" device="disk">
      <driver name="qemu" type="raw"/>
      <source file="{dir}/config.iso"/>
      <target dev="vdb" bus="virtio"/>
      <readonly/>
    </disk>
    <interface type="bridge">
      <source bridge="{bridge}"/>
      <mac address="{mac}"/>
      <model type="virtio"/>
    </interface>
    <serial type="pty">
      <log file="{dir}/console.log" append="off"/>
      <target port="0"/>
    </serial>
    <console type="pty"><target type="serial" port="0"/></console>
  </devices>
</domain>
"""


def config_drive(path: Path, name: str, public_key: str) -> None:
    """A NoCloud config drive as the NC makes it (pycdlib, ISO 9660 labelled cidata, Rock Ridge and Joliet)."""
    import pycdlib

    meta = f"instance-id: {name}\nlocal-hostname: {name}\npublic-keys:\n  - {json.dumps(public_key.strip())}\n"
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for index, (file, data) in enumerate({"meta-data": meta.encode(), "user-data": b""}.items()):
        iso.add_fp(io.BytesIO(data), len(data), f"/F{index:07d}.;1", rr_name=file, joliet_path=f"/{file}")
    iso.write(str(path))
    iso.close()


class HandWorld:
    """The same guest booted by hand: a bridge, a namespace with dnsmasq and a static metadata server, virsh.
    With `uri` and `bridge_netns` (the cloud's own libvirtd and its router namespace), on the same libvirtd and in
    the same namespace as the cloud's guests; else on the host's libvirtd with the bridge on the host."""

    def __init__(self, image_dir: Path, vm_memory_mb: int, vm_vcpus: int, uri: str = HOST_LIBVIRT,
                 bridge_netns: str = ""):  # fmt: skip
        tag = secrets.token_hex(2)
        self.image_dir, self.memory_mb, self.vcpus = image_dir, vm_memory_mb, vm_vcpus
        self.uri, self.bridge_netns = uri, bridge_netns
        self.bridge, self.port, self.ns = f"kdhb{tag}", f"kdhp{tag}", f"kdh{tag}-dhcp"
        self.work = make_workdir("koala-deploy-hand-")
        self.processes: list[subprocess.Popen] = []
        self.ns_made = False
        self.launched: list[str] = []

    def start(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        key = ed25519.Ed25519PrivateKey.generate()
        self.key_file = self.work / "hand-key.pem"
        self.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                    serialization.NoEncryption()))  # fmt: skip
        self.key_file.chmod(0o600)
        self.public_key = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                        serialization.PublicFormat.OpenSSH).decode()  # fmt: skip
        for name in ("kernel", "initrd", "root.img"):  # a copy of the cached build, as the NC keeps its own cache
            sh("cp", "--sparse=always", str(self.image_dir / name), str(self.work / name))
        sh("ip", "netns", "add", self.ns)
        self.ns_made = True
        self.run_ns("ip", "link", "set", "lo", "up")
        self.run_bridge_ns("ip", "link", "add", self.bridge, "type", "bridge")
        self.run_bridge_ns("ip", "link", "set", self.bridge, "up")
        self.run_bridge_ns("ip", "link", "add", self.port, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        self.run_bridge_ns("ip", "link", "set", self.port, "master", self.bridge, "up")
        self.run_ns("ip", "addr", "add", f"{BASE_NET}.1/24", "dev", "eth0")
        self.run_ns("ip", "addr", "add", "169.254.169.254/32", "dev", "eth0")
        self.run_ns("ip", "link", "set", "eth0", "up")
        self.leases = self.work / "dnsmasq.leases"
        # Every guest's fixed address, written before dnsmasq starts (guest n: MAC ...:db:00:n, address .10+n).
        self.hosts = self.work / "dhcp-hosts"
        self.hosts.write_text("".join(f"{self.mac(n)},{self.address(n)}\n" for n in range(200)))
        self.spawn("dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--bind-interfaces",
                   "--interface=eth0", "--dhcp-authoritative", "--user=root",
                   f"--dhcp-range={BASE_NET}.0,static,255.255.255.0,1h", f"--dhcp-option=option:router,{BASE_NET}.1",
                   f"--dhcp-leasefile={self.leases}", f"--dhcp-hostsfile={self.hosts}")  # fmt: skip
        self.metadata = self.work / "metadata"
        self.metadata.mkdir()
        self.spawn(sys.executable, "-m", "http.server", "80", "--bind", "169.254.169.254",
                   "--directory", str(self.metadata))  # fmt: skip

    @staticmethod
    def mac(n: int) -> str:
        return f"52:54:00:db:00:{n:02x}"

    @staticmethod
    def address(n: int) -> str:
        return f"{BASE_NET}.{10 + n}"

    def run_ns(self, *argv: str) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.ns, *argv)

    def run_bridge_ns(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        inside = ("ip", "netns", "exec", self.bridge_netns) if self.bridge_netns else ()
        return sh(*inside, *argv, check=check)

    def spawn(self, *argv: str) -> None:
        process = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        self.processes.append(process)
        time.sleep(0.3)
        if process.poll() is not None:
            raise RuntimeError(f"{argv[0]} in {self.ns} exited with status {process.returncode}")

    def boot(self, index: int) -> dict:
        name = f"kdh-{secrets.token_hex(4)}"
        mac, address = self.mac(index % 200), self.address(index % 200)
        vm = self.work / name
        vm.mkdir(mode=0o755)
        meta = self.metadata / "latest" / "meta-data"
        (meta / "public-keys" / "0").mkdir(parents=True, exist_ok=True)
        (meta / "instance-id").write_text(name)
        (meta / "public-keys" / "0" / "openssh-key").write_text(self.public_key + "\n")
        for part in ("kernel", "initrd"):
            os.link(self.work / part, vm / part)
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(self.work / "root.img"),
           str(vm / "root.qcow2"))  # fmt: skip
        config_drive(vm / "config.iso", name, self.public_key)
        xml = vm / "domain.xml"
        xml.write_text(DOMAIN_XML.format(name=name, memory_mb=self.memory_mb, vcpus=self.vcpus, dir=vm,
                                         bridge=self.bridge, mac=mac))  # fmt: skip
        console = vm / "console.log"
        self.launched.append(name)
        try:
            started = time.monotonic()
            sh("virsh", "-c", self.uri, "create", str(xml))
            created = time.monotonic()
            line = f"KOALA-GUEST ready instance={name}"
            ready = wait_for(lambda: console.exists() and line in console.read_text(errors="replace"), 240,
                             f"{line} in {console}")  # fmt: skip
            answered = ssh_until_answers(self.ns, address, self.key_file, name)
            source = "metadata" if "source=metadata" in console.read_text(errors="replace") else "other"
        finally:
            sh("virsh", "-c", self.uri, "destroy", name, check=False)
            shutil.rmtree(vm, ignore_errors=True)
        return {"total": answered - started, "virsh_create": created - started, "to_console_ready": ready - created,
                "console_ready_to_ssh": answered - ready, "source": source}  # fmt: skip

    def close(self) -> None:
        destroy_domains(self.launched, self.uri)
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                process.wait(timeout=5)
        if self.ns_made:
            for pid in sh("ip", "netns", "pids", self.ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", self.ns, check=False)
        for link in (self.port, self.bridge):
            self.run_bridge_ns("ip", "link", "del", link, check=False)
        shutil.rmtree(self.work, ignore_errors=True)


def bench_guest_boot(repeat: int, world: str = "up") -> dict:
    from cli.allinone import qemu_installed, qemu_usable
    from cli.guest_image import build
    from services.cloud_controller.compute.vmtypes import DEFAULTS

    if not (qemu_installed() if world == "up" else qemu_usable()):
        return {"skipped": "libvirtd with QEMU is not usable (deploy/bootstrap.sh sets it up)"}
    c1_medium = next(t for t in DEFAULTS if t.name == "c1.medium")
    work = Path(tempfile.mkdtemp(prefix="koala-deploy-bench-"))
    koala = KoalaUpWorld(work) if world == "up" else KoalaWorld(work)
    hand = None
    try:
        log(f"building the Koala world ({world}: four services, their network, guest image registered)")
        koala.start()
        # By hand on the same libvirtd as the cloud's guests (koala up's own, in its router namespace).
        same = {"uri": koala.uri, "bridge_netns": getattr(koala, "router_netns", "")}
        hand = HandWorld(build(), c1_medium.memory_mb, c1_medium.cores, **same)
        hand.start()
        koala_runs, hand_runs = [], []
        for n in range(repeat):
            koala_runs.append(koala.boot())
            log(f"koala {n + 1}/{repeat}: RunInstances -> SSH {koala_runs[-1]['total']:.1f} s")
            hand_runs.append(hand.boot(n))
            log(f"by hand {n + 1}/{repeat}: virsh create -> SSH {hand_runs[-1]['total']:.1f} s")
    finally:
        if hand is not None:
            hand.close()
        koala.close()
        shutil.rmtree(work, ignore_errors=True)
    koala_median = statistics.median(r["total"] for r in koala_runs)
    hand_median = statistics.median(r["total"] for r in hand_runs)
    koala_phases = ("run_instances_call", "to_running", "running_to_console_ready", "console_ready_to_ssh")
    hand_phases = ("virsh_create", "to_console_ready", "console_ready_to_ssh")
    return {
        "instances": repeat,
        "koala_world": world,
        "libvirtd": "the cloud's own, in its router namespace, for both" if koala.uri != HOST_LIBVIRT else "the host's",
        "vm": {"type": "c1.medium", "memory_mb": c1_medium.memory_mb, "vcpus": c1_medium.cores, "domain": "qemu"},
        "koala_run_to_ssh_s": summary([r["total"] for r in koala_runs]),
        "koala_phases_s": {p: summary([r[p] for r in koala_runs]) for p in koala_phases},
        "koala_guest_key_source": [r["source"] for r in koala_runs],
        "by_hand_virsh_create_to_ssh_s": summary([r["total"] for r in hand_runs]),
        "by_hand_phases_s": {p: summary([r[p] for r in hand_runs]) for p in hand_phases},
        "by_hand_guest_key_source": [r["source"] for r in hand_runs],
        "ssh_probe_startup_s": probe_startup(),
        "overhead_s": round(koala_median - hand_median, 2),
        "ratio_koala_over_by_hand": round(koala_median / hand_median, 2),
        "target_ratio": 1.1,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="cold starts (each with its baseline)")
    parser.add_argument("--guest-repeat", type=int, help="guests booted each way (default: --repeat)")
    parser.add_argument("--skip-cold", action="store_true", help="skip the cold start measurement")
    parser.add_argument("--skip-guest", action="store_true", help="skip the guest boot measurement")
    parser.add_argument("--baseline-ref", default=BASELINE_REF, help="the commit whose koala up is the baseline")
    parser.add_argument("--previous-ref", default=PREVIOUS_REF,
                        help="another commit measured the same way ('' to skip): before the last change")  # fmt: skip
    parser.add_argument("--koala-world", choices=["up", "acceptance"], default="up",
                        help="guests on koala up's own network (default) or the acceptance test's")  # fmt: skip
    args = parser.parse_args()
    if os.geteuid() != 0:
        print(json.dumps({"skipped": "needs root (libvirtd, namespaces, koala up)"}))
        return 0

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt  # so every finally block cleans up on SIGTERM too

    signal.signal(signal.SIGTERM, interrupted)
    result: dict = {"benchmark": "deploy"}
    started = time.monotonic()
    if not args.skip_cold:
        result["cold_start"] = bench_cold_start(args.repeat, args.baseline_ref, args.previous_ref)
    if not args.skip_guest:
        result["guest_boot"] = bench_guest_boot(args.guest_repeat or args.repeat, args.koala_world)
    result["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
