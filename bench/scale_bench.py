"""Control-plane scale (issue 24): 10,000 instances on libvirt's test driver (no guest work, so every second is the
control plane's), sent through boto3 as ten RunInstances of 1,000, JSON on stdout.

Scenarios, each a whole cloud of real processes (CLC, Walrus, CCs, NCs) on free loopback ports:
- `nodes`: 1 CC and 4 NC processes (the issue's measurement of the tree it started from). Run on a temporary
  `git worktree` of `--baseline` (cb9775d) and on this tree in the same run: the speed-up is this tree's.
- `fleet`: 1 CLC, 4 CCs and 1,000 simulated nodes (4 `koala nc-fleet` processes of 250 real NC identities): this
  tree only (the baseline has no fleet). A batch goes to the zones in turn. Priorities (`fleet_nice`,
  `clc_nice` in the JSON): the fleet processes run at nice `--fleet-nice` (19; 0 leaves them as the rest): they
  stand in for 1,000 hosts of their own, whose CPU a real cloud's control plane does not share, and at the same
  priority their ~40 CPU-s during the launch took the CLC's core from it while it answered. The CLC runs at nice
  `--clc-nice` (-10; 0 leaves it as the rest): in a real cloud it has a host of its own, here it shares two cores
  with 4 CCs, the fleet, this client and whatever else the machine runs (other work on a shared machine kept
  its DescribeInstances waiting for a core: ~15 ms of its CPU, 100-200 ms of wall time at worst). Walrus, the
  CCs and this client run at normal priority, all on these 2 cores (in a real cloud each CC has a host too).

Measured per scenario: the time to accept each RunInstances; for each thousand the time from its request to its
last instance `running` and the marginal time (its completion minus the previous one's: flat when the next
thousand costs the same however many run); when half and all are running; DescribeInstances of everything every
`--describe-every` s (0.2) during the launch and at 10,000, both as the CLC's own time (its Server-Timing header:
the server-side figure, with the CPU time the CLC had in it) and as the round trip of a raw signed request (no
client parsing: the CLC's time plus the transfer); the CLC's event loop stalls of 20 ms or more during the launch,
with the CPU time its thread had in them (KOALA_LOOP_STALL_MS: its own work when close to the stall, a wait for a
core the other processes had when far below), and its full garbage collections as long; the time to terminate
everything; each process's CPU seconds and memory (RSS at 10,000 instances and after they ended); how many run
every 2 s (`running_over_time`); how often the CCs logged a node taken for DOWN, a RunInstance in doubt sent again,
a failover or a failed push to the CLC (`cc_log_events`). Progress is polled with
DescribeInstances filtered on pending (cheap); the full listing at the end proves every instance running. Before
the timing, one instance runs and ends on every node (`warm_up`): the image is in every node's cache, as in the
issue's measurement of a warm cloud.

    .venv/bin/python bench/scale_bench.py [--instances 10000] [--batch 1000] [--baseline cb9775d]
        [--scenarios baseline,nodes,fleet] [--fleet-nodes 1000] [--ccs 4] [--fleet-nice 19] [--clc-nice -10]
        [--describe-every 0.2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
API_VERSION = "2016-11-15"
_ID = re.compile(rb"<instanceId>(i-[0-9a-f]+)</instanceId>")
_SERVER_TIMING = re.compile(r"\bclc;dur=([0-9.]+)")
_SERVER_CPU = re.compile(r"\bcpu;dur=([0-9.]+)")
_STATE = re.compile(rb"<instanceState>\s*<code>\d+</code>\s*<name>([a-z-]+)</name>")
_STALL = re.compile(r"event loop held (\d+) ms \(its thread on a CPU for (\d+) ms\)")
_COLLECTION = re.compile(r"garbage collection of generation 2 took (\d+) ms")
LOOP_STALL_MS = 20  # the CLC logs each time its event loop was held this long (common/loop_monitor.py)


# --- measuring ------------------------------------------------------------------------------------------------
def process_stats(pid: int) -> dict[str, float]:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]
    return {"cpu_s": round(sum(int(v) for v in stat[11:15]) / TICK, 2), "rss_mb": round(rss / 1024, 1)}


class Ec2Raw:
    """Signed EC2 Query requests sent as they are (SigV4 by botocore), the answer's bytes not parsed by a model."""

    def __init__(self, url: str, access_key: str, secret_key: str, region: str):
        from botocore.credentials import Credentials

        self.url, self.region = url, region
        self.credentials = Credentials(access_key, secret_key)

    def call(self, params: dict[str, str], timeout: float = 120) -> tuple[bytes, float, float | None, float | None]:
        """The answer, the round trip (s), the CLC's own time for it and the CPU time it had meanwhile (s, its
        Server-Timing; None without)."""
        from urllib.parse import urlencode

        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        body = urlencode({"Version": API_VERSION, **params})
        headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
        request = AWSRequest(method="POST", url=self.url, data=body, headers=headers)
        SigV4Auth(self.credentials, "ec2", self.region).add_auth(request)
        prepared = urllib.request.Request(self.url, data=body.encode(), headers=dict(request.headers), method="POST")
        started = time.monotonic()
        with urllib.request.urlopen(prepared, timeout=timeout) as response:
            data = response.read()
            header = response.headers.get("Server-Timing", "")
        took = time.monotonic() - started
        timing, cpu = _SERVER_TIMING.search(header), _SERVER_CPU.search(header)
        return (
            data,
            took,
            float(timing.group(1)) / 1000 if timing else None,
            float(cpu.group(1)) / 1000 if cpu else None,
        )

    def states(self, filters: dict[str, str] | None = None) -> tuple[dict[str, str], float, float | None]:
        params = {"Action": "DescribeInstances"}
        for n, (name, value) in enumerate((filters or {}).items(), start=1):
            params[f"Filter.{n}.Name"], params[f"Filter.{n}.Value.1"] = name, value
        data, took, server, _ = self.call(params)
        ids, states = _ID.findall(data), _STATE.findall(data)
        assert len(ids) == len(states), "unexpected DescribeInstances layout"
        return {i.decode(): s.decode() for i, s in zip(ids, states, strict=True)}, took, server


def set_priority(pid: int, nice: int) -> None:
    """Every thread of a process at this niceness (threads and children it makes later inherit it)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            os.setpriority(os.PRIO_PROCESS, int(task), nice)
        except ProcessLookupError:
            pass  # a thread that ended meanwhile


def clc_loop_stalls(text: str) -> dict:
    """The CLC's event loop stalls and long full collections logged in `text` (common/loop_monitor.py)."""
    stalls = [(int(held), int(cpu)) for held, cpu in _STALL.findall(text)]
    collections = [int(ms) for ms in _COLLECTION.findall(text)]
    return {
        "threshold_ms": LOOP_STALL_MS,
        "stalls": len(stalls),
        "max_held_ms": max((held for held, _ in stalls), default=0),
        "held_ms_total": sum(held for held, _ in stalls),
        # (held, on a CPU) of the longest: close values are the CLC's own work, a small CPU figure a wait for a core.
        "longest": sorted(stalls, reverse=True)[:10],
        "full_collections_over_threshold": len(collections),
        "max_full_collection_ms": max(collections, default=0),
    }


def note(message: str) -> None:
    """Progress on stderr (the JSON result alone goes to stdout)."""
    print(f"scale_bench {time.strftime('%H:%M:%S')}: {message}", file=sys.stderr, flush=True)


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 1) if seconds is not None else None


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "median": round(statistics.median(ordered) * 1000, 1),
        "p90": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 1),
        "max": round(ordered[-1] * 1000, 1),
    }


# --- the clouds -----------------------------------------------------------------------------------------------
class World:
    """A cloud of real processes; `pids` names every process measured."""

    def __init__(
        self, base: Path, scenario: str, instances: int, ccs: int, fleet_nodes: int, fleet_nice: int, clc_nice: int
    ):
        from tests.harness import Cloud, free_port
        from tests.nc.support import node_file

        self.zones: list[str] = ["zone1"]
        self.node_count = 4 if scenario == "nodes" else fleet_nodes
        # The simulated nodes all call from 127.0.0.1, where a real fleet has an address per host: the per-address
        # connection limit (1,000, against one client's flood) is raised where the whole fleet connects.
        shared_address = {"KOALA_HTTP_MAX_CONNECTIONS_PER_PEER": 8000}
        # The CLC and Walrus check their peers every 30 s, as the other roles here, not every second (the harness's
        # setting for tests): the CLC's call to each CC's DescribeService brings back every node's status.
        quiet_peers: dict[str, object] = {"KOALA_PEER_POLL_SECONDS": 30}
        clc_settings = dict(quiet_peers)
        self.loop_monitored = (Path.cwd() / "common" / "loop_monitor.py").exists()  # not in the baseline's tree
        if self.loop_monitored:
            clc_settings["KOALA_LOOP_STALL_MS"] = LOOP_STALL_MS
        cc_settings = {"NC_POLLING_FREQUENCY": 30, "KOALA_PEER_POLL_SECONDS": 30, **shared_address}
        if scenario == "fleet":
            # 250 simulated nodes share one process (and a core): while it launches hundreds of instances a
            # node's answer to a poll can take longer than the 5 s a real host gets, and a node taken for DOWN
            # takes its capacity away (a launch was refused: '516 of 1000 fit').
            cc_settings["KOALA_NC_TIMEOUT"] = 30
            from tests.fleet import FLEET_PEER_POLL_SECONDS  # here: the baseline tree of `nodes` has no fleet

            # A CC's peer monitor calls DescribeService on each of its 250 nodes besides its health polls, which
            # already tell whether each node is there: rarely here.
            cc_settings["KOALA_PEER_POLL_SECONDS"] = FLEET_PEER_POLL_SECONDS
        nc_settings = {
            "HYPERVISOR": "test",
            "KOALA_PEER_POLL_SECONDS": 30,
            "KOALA_NC_MONITOR_SECONDS": 5,
            "SWAP_SIZE": 64,
            "KOALA_NC_FORGET_SECONDS": 600,
        }
        if scenario == "nodes":
            per_node = -(-instances * 11 // 40)  # 10 % more room than instances: the admission's view lags
            ports = {f"n{i}": free_port() for i in range(4)}
            nodes = " ".join(f"127.0.0.1:{p}" for p in ports.values())
            extra = {"cc": {"NODES": nodes, **cc_settings}, "clc": clc_settings, "walrus": quiet_peers}
            self.cloud = Cloud(base, roles=("clc", "walrus", "cc"), extra=extra)
            self.members = []
            for name, port in ports.items():
                data_dir = self.cloud.dir / "data" / f"nc-{name}"
                data_dir.mkdir(parents=True, exist_ok=True)
                uri = node_file(data_dir / "node.xml", cpus=per_node, memory_gib=512)
                limits = {"MAX_CORES": per_node, "MAX_MEM": per_node * 128, "MAX_DISK": per_node * 2}
                node = self.cloud.add_node(name, port, {**nc_settings, "KOALA_LIBVIRT_URI": uri, **limits})
                self.members.append(node)
            self.cloud.start()
            for node in self.members:
                node.start()
        else:
            from tests.fleet import ClusterProcess, NodeFleet, fleet_ports

            per_zone = fleet_nodes // ccs
            # Batches go to the zones in turn, so some zones get one more: 30 % more room than instances.
            cores = -(-instances * 13 // (fleet_nodes * 10))
            # The members poll their CC and Walrus as rarely as tests/fleet.py sets it (the CC's polls tell both).
            limits = {"MAX_MEM": cores * 128, "MAX_DISK": cores * 2, **nc_settings}
            limits["KOALA_PEER_POLL_SECONDS"] = FLEET_PEER_POLL_SECONDS

            def entries(zone_ports: list[int]) -> str:
                return " ".join(f"127.0.0.1:{p}" for p in zone_ports)

            # Each zone's nodes take their ports at once after they are chosen (and the CC that lists them is
            # configured), before the cloud starts: a port found free then is taken by another program later.
            ports = fleet_ports(per_zone)
            extra = {
                "cc": {"NODES": entries(ports), **cc_settings},
                "clc": clc_settings,
                "walrus": {**shared_address, **quiet_peers},
            }
            self.cloud = Cloud(base, roles=("clc", "walrus", "cc"), extra=extra)
            self.members = []
            clusters: list[ClusterProcess] = []
            cc_url = self.cloud.url("cc")
            for index in range(ccs):
                if index:
                    ports = fleet_ports(per_zone)
                    cc = ClusterProcess(self.cloud, f"zone{index + 1}", entries(ports), cc_settings)
                    self.cloud.extra_nodes.append(cc)
                    clusters.append(cc)
                    cc_url = cc.url
                fleet = NodeFleet(self.cloud, f"z{index + 1}", ports, cc_url, cores, extra=limits, log_level="WARNING")
                self.cloud.extra_nodes.append(fleet)
                began = time.monotonic()
                fleet.start(timeout=900)
                note(f"{fleet.id}: {per_zone} nodes healthy in {time.monotonic() - began:.1f} s")
                if fleet_nice and fleet.process is not None:
                    set_priority(fleet.process.pid, fleet_nice)
                self.members.append(fleet)
            self.cloud.start()
            if clc_nice:
                set_priority(self.cloud.processes["clc"].pid, clc_nice)
            for cc in clusters:
                cc.start()
                cc.register()
                self.members.append(cc)
                self.zones.append(cc.zone)

    def pids(self) -> dict[str, int]:
        found = {role: p.pid for role, p in self.cloud.processes.items()}
        for member in self.members:
            if member.process is not None:
                found[member.id] = member.process.pid
        return found

    def stats(self) -> dict[str, dict[str, float]]:
        return {name: process_stats(pid) for name, pid in self.pids().items()}

    def log_events(self) -> dict[str, int]:
        """How often the CCs logged what slows a launch down: a node taken for DOWN, a RunInstance left in doubt
        and sent again, an instance placed on another node, a push to the CLC that failed (retried with backoff)."""
        events = {
            "node_down": " is DOWN",
            "run_in_doubt_resent": "; asking ",
            "failed_over": ": retrying on ",
            "clc_push_failed": "cannot push ",
        }
        counts = dict.fromkeys(events, 0)
        for path in (self.cloud.dir / "logs").glob("cc*.log"):
            for line in path.read_text(errors="replace").splitlines():
                for name, mark in events.items():
                    counts[name] += mark in line
        return counts

    def stop(self) -> None:
        self.cloud.stop()


def wait_zones(ec2, zones: list[str], wanted: int, timeout: float = 600) -> None:
    """Until the zones together offer `wanted` m1.small (every node has reported its capacity)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = ec2.describe_availability_zones(ZoneNames=["verbose"])["AvailabilityZones"]
        free = sum(int(r["State"].split()[0]) for r in rows if r["ZoneName"] == "|- m1.small")
        if free >= wanted:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"the zones offer {free} m1.small, not {wanted}, after {timeout} s")
        time.sleep(1)


def warm_up(ec2, raw: Ec2Raw, image: str, world: World) -> None:
    """One instance on every node (ROUNDROBIN), run and ended, before anything is timed: each node's first
    launch of an image downloads it and prepares its disk templates, work a real node does once, in parallel
    with the others, that a machine simulating 1,000 of them would otherwise do all at once inside the timing."""
    per_zone = world.node_count // len(world.zones)
    ids: list[str] = []
    for zone in world.zones:
        answer = ec2.run_instances(ImageId=image, MinCount=per_zone, MaxCount=per_zone, InstanceType="m1.small",
                                   Placement={"AvailabilityZone": zone})  # fmt: skip
        ids += [i["InstanceId"] for i in answer["Instances"]]
    for wanted, absent in (("running", None), ("terminated", "terminated")):
        deadline = time.monotonic() + 900
        shown = time.monotonic()
        while True:
            states, _, _ = raw.states()
            if all(states.get(i, absent) == wanted for i in ids):
                break
            ended = [i for i in ids if states.get(i) == "terminated"] if wanted == "running" else []
            if ended:  # a launch failed: waiting longer would not bring it back
                rows = ec2.describe_instances(InstanceIds=ended[:5])["Reservations"]
                reasons = {i["StateReason"]["Message"] for r in rows for i in r["Instances"] if i.get("StateReason")}
                raise SystemExit(f"warm-up: {len(ended)} instances ended instead of running: {sorted(reasons)}")
            if time.monotonic() > shown + 10:
                done = sum(1 for i in ids if states.get(i, absent) == wanted)
                note(f"warm-up: {done} of {len(ids)} {wanted}")
                shown = time.monotonic()
            if time.monotonic() > deadline:
                raise SystemExit(f"warm-up: not all {wanted} after 900 s")
            time.sleep(1)
        if wanted == "running":
            for start in range(0, len(ids), 500):
                ec2.terminate_instances(InstanceIds=ids[start : start + 500])


def measure(
    scenario: str,
    instances: int,
    batch: int,
    ccs: int,
    fleet_nodes: int,
    fleet_nice: int,
    clc_nice: int,
    describe_every: float,
) -> dict:
    from tests.clc.compute_cloud import bundle_and_upload
    from tests.clc.ec2_helpers import REGION, admin_creds, client, ec2_url

    base = Path(tempfile.mkdtemp(prefix=f"scale-{scenario}-"))
    began_setup = time.monotonic()
    world = World(base / "cloud", scenario, instances, ccs, fleet_nodes, fleet_nice, clc_nice)
    try:
        cloud = world.cloud
        creds = admin_creds(cloud)
        ec2 = client(cloud, creds)
        note(f"{scenario}: cloud up after {time.monotonic() - began_setup:.1f} s")
        location = bundle_and_upload(cloud, base / "image", "scale", "scale-bucket")
        image = ec2.register_image(ImageLocation=location, Name="scale")["ImageId"]
        wait_zones(ec2, world.zones, instances)
        raw = Ec2Raw(ec2_url(cloud), creds.access_key, creds.secret_key, REGION)
        note(f"{scenario}: zones ready after {time.monotonic() - began_setup:.1f} s")
        warm_up(ec2, raw, image, world)
        note(f"{scenario}: warm-up done after {time.monotonic() - began_setup:.1f} s")
        wait_zones(ec2, world.zones, instances)
        setup_s = time.monotonic() - began_setup
        before = world.stats()

        batches: list[dict] = []
        launched: dict[str, int] = {}  # instance id -> batch index
        pending_polls: list[float] = []
        # (when, round trip, the CLC's time, its CPU time (s), how many listed)
        full_polls: list[tuple[float, float, float | None, float | None, int]] = []
        done_at: dict[int, float] = {}
        running_count = [0]
        curve: list[tuple[float, int]] = []  # (when, how many of those accepted are running), every 2 s
        stop = threading.Event()
        clc_log = cloud.aio.log_path("clc")
        log_from = clc_log.stat().st_size
        began = time.monotonic()

        def describe_all() -> None:
            """A DescribeInstances of everything every `describe_every` s; the answer counted, not parsed (the
            bench's own CPU is the machine's too)."""
            while not stop.is_set():
                asked = time.monotonic()
                try:
                    data, took, server, cpu = raw.call({"Action": "DescribeInstances"})
                    full_polls.append((asked - began, took, server, cpu, data.count(b"<instanceId>")))
                except Exception as err:  # a poll may time out on a loaded machine: the next one counts
                    print(f"describe failed: {err}", file=sys.stderr)
                stop.wait(max(0.0, asked + describe_every - time.monotonic()))

        def poll() -> None:
            while not stop.is_set():
                try:
                    # What was accepted before the poll is in its answer if still pending; what was accepted
                    # after it is not, and would pass for running (taken after the poll, a batch was done early).
                    accepted = {i for i, batch in enumerate(list(batches)) if batch.get("accepted_at") is not None}
                    known = {i: b for i, b in dict(launched).items() if b in accepted}
                    pending, took, server = raw.states({"instance-state-name": "pending"})
                    pending_polls.append((took, server))
                    now = time.monotonic()
                    waiting_ids = [i for i in pending if i in known]
                    waiting = {known[i] for i in waiting_ids}
                    for index in accepted - waiting - set(done_at):
                        done_at[index] = now - began
                    running_count[0] = len(known) - len(waiting_ids)
                    if not curve or now - began - curve[-1][0] >= 2.0:
                        curve.append((now - began, running_count[0]))
                except Exception as err:  # a poll may time out on a loaded machine: the next one counts
                    print(f"poll failed: {err}", file=sys.stderr)
                stop.wait(0.5)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        describer = threading.Thread(target=describe_all, daemon=True)
        describer.start()
        try:
            for index in range(instances // batch):
                zone = world.zones[index % len(world.zones)]
                entry: dict = {"zone": zone, "sent_at": round(time.monotonic() - began, 2)}
                batches.append(entry)
                started = time.monotonic()
                answer = ec2.run_instances(
                    ImageId=image,
                    MinCount=batch,
                    MaxCount=batch,
                    InstanceType="m1.small",
                    Placement={"AvailabilityZone": zone},
                )
                entry["accept_s"] = round(time.monotonic() - started, 2)
                for instance in answer["Instances"]:
                    launched[instance["InstanceId"]] = index
                entry["accepted_at"] = round(time.monotonic() - began, 2)
        except BaseException:
            stop.set()  # the poller stops with the launch
            raise
        total = len(launched)
        deadline = time.monotonic() + 1800
        half_at = None
        while len(done_at) < len(batches) and time.monotonic() < deadline:
            if half_at is None and running_count[0] >= total // 2:
                half_at = time.monotonic() - began
            time.sleep(0.2)
        stop.set()
        poller.join()
        describer.join()
        with clc_log.open("rb") as log:
            log.seek(log_from)
            launch_log = log.read().decode(errors="replace")
        curve.append((time.monotonic() - began, running_count[0]))
        listed, *describe_at_full = raw.states()
        all_running_s = max(done_at.values()) if len(done_at) == len(batches) else None
        running = sum(1 for i in launched if listed.get(i) == "running")
        states_at_end = dict(Counter(listed.get(i, "missing") for i in launched))
        others = [i for i in launched if listed.get(i) != "running"][:20]
        rows = ec2.describe_instances(InstanceIds=others)["Reservations"] if others else []
        reasons_at_end = dict(
            Counter(i.get("StateReason", {}).get("Message", "") for r in rows for i in r["Instances"])
        )
        at_full = world.stats()
        describe_full = [tuple(raw.states()[1:]) for _ in range(5)]

        previous = 0.0
        for index, entry in enumerate(batches):
            finished = done_at.get(index)
            entry["all_running_at"] = round(finished, 2) if finished is not None else None
            entry["request_to_running_s"] = round(finished - entry["sent_at"], 2) if finished is not None else None
            # What this thousand added to the run: its completion past every earlier one's (0 if it overtook them).
            entry["marginal_s"] = round(max(0.0, finished - previous), 2) if finished is not None else None
            previous = max(previous, finished or 0.0)

        began_end = time.monotonic()
        ids = list(launched)
        for start in range(0, len(ids), 500):  # a request carries at most 1,000 parameters
            ec2.terminate_instances(InstanceIds=ids[start : start + 500])
        accepted_end = time.monotonic() - began_end
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            listed_end, _, _ = raw.states()
            if all(listed_end.get(i, "terminated") == "terminated" for i in ids):
                break
            time.sleep(1)
        terminate_s = time.monotonic() - began_end
        time.sleep(10)  # the CC keeps ended instances a moment (KOALA_TEARDOWN_RETENTION): memory after that
        after = world.stats()

        return {
            "scenario": scenario,
            "zones": len(world.zones),
            "nodes": fleet_nodes if scenario == "fleet" else 4,
            "instances": total,
            "running_at_end": running,
            "states_at_end": states_at_end,
            "reasons_not_running": reasons_at_end,  # of (at most 20 of) those not running
            "setup_s": round(setup_s, 1),
            "accept_all_requests_s": round(sum(b["accept_s"] for b in batches), 2),
            "half_running_s": round(half_at, 2) if half_at is not None else None,
            "all_running_s": round(all_running_s, 2) if all_running_s is not None else None,
            "first_thousand_marginal_s": batches[0]["marginal_s"],
            "last_thousand_marginal_s": batches[-1]["marginal_s"],
            "batches": batches,
            "describe_pending_ms": percentiles([took for took, _ in pending_polls]),
            "describe_pending_server_ms": percentiles([s for _, s in pending_polls if s is not None]),
            "describe_all_during_launch_ms": percentiles([took for _, took, _, _, _ in full_polls]),
            "describe_all_during_launch_server_ms": percentiles([s for _, _, s, _, _ in full_polls if s is not None]),
            # The same once half the instances or more were listed (early samples list few, and cost little).
            "describe_all_during_launch_server_ms_from_half": percentiles(
                [s for _, _, s, _, n in full_polls if s is not None and n >= total // 2]
            ),
            # The CPU time the CLC's thread had for each: its own work, the rest of its time waiting for a core.
            "describe_all_during_launch_server_cpu_ms": percentiles(
                [c for _, _, _, c, _ in full_polls if c is not None]
            ),
            "describe_all_every_s": describe_every,
            # [when (s), round trip (ms), the CLC's time (ms), its CPU time (ms), how many listed]
            "describe_all_during_launch": [
                [round(when, 2), round(took * 1000, 1), _ms(server), _ms(cpu), n]
                for when, took, server, cpu, n in full_polls
            ],
            "clc_loop_during_launch": clc_loop_stalls(launch_log) if world.loop_monitored else None,
            "fleet_nice": fleet_nice if scenario == "fleet" else None,
            "clc_nice": clc_nice if scenario == "fleet" else None,
            "describe_all_at_full_ms": percentiles([took for took, _ in [describe_at_full, *describe_full]]),
            "describe_all_at_full_server_ms": percentiles(
                [s for _, s in [describe_at_full, *describe_full] if s is not None]
            ),
            "terminate_requests_s": round(accepted_end, 2),
            "terminate_all_s": round(terminate_s, 2),
            "cpu_s_during_run": {
                name: round(at_full[name]["cpu_s"] - before[name]["cpu_s"], 1) for name in at_full if name in before
            },
            "rss_mb_idle": {name: s["rss_mb"] for name, s in before.items()},
            "rss_mb_at_full": {name: s["rss_mb"] for name, s in at_full.items()},
            "rss_mb_after_end": {name: s["rss_mb"] for name, s in after.items()},
            "running_over_time": [[round(when, 1), n] for when, n in curve],
            "cc_log_events": world.log_events(),
        }
    except BaseException:
        kept = Path(tempfile.mkdtemp(prefix=f"scale-{scenario}-logs-"))
        subprocess.run(["cp", "-r", str(world.cloud.dir / "logs"), str(kept)], check=False)
        note(f"{scenario} failed: the services' logs are kept in {kept}")
        raise
    finally:
        world.stop()
        subprocess.run(["rm", "-rf", str(base)], check=False)


# --- driver ---------------------------------------------------------------------------------------------------
def run_child(tree: Path, scenario: str, args: argparse.Namespace) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", str(tree), "--scenario", scenario,
            "--instances", str(args.instances), "--batch", str(args.batch), "--ccs", str(args.ccs),
            "--fleet-nodes", str(args.fleet_nodes), "--fleet-nice", str(args.fleet_nice),
            "--clc-nice", str(args.clc_nice),
            "--describe-every", str(args.describe_every)]  # fmt: skip
    with tempfile.NamedTemporaryFile("w+", prefix=f"scale-bench-{scenario}-", suffix=".log") as progress:
        note(f"{scenario} in {tree}: progress in {progress.name}")
        done = subprocess.run(
            argv,
            stdout=subprocess.PIPE,
            stderr=progress,
            text=True,
            timeout=7200,
            check=False,
            env={**os.environ, "PYTHONPATH": str(tree)},  # the services the child spawns run that tree's code
            cwd=tree,
        )
        progress.seek(0)
        errors = progress.read()
    if done.returncode != 0:  # the other scenarios' figures still count: the failure is reported with them
        print(f"{scenario} in {tree} failed:\n{done.stdout[-2000:]}\n{errors[-4000:]}", file=sys.stderr)
        return {"failed": errors.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--ccs", type=int, default=4)
    parser.add_argument("--fleet-nodes", type=int, default=1000)
    parser.add_argument("--fleet-nice", type=int, default=19)
    parser.add_argument("--clc-nice", type=int, default=-10)
    parser.add_argument("--describe-every", type=float, default=0.2)
    parser.add_argument("--baseline", default="cb9775d")
    parser.add_argument("--scenarios", default="baseline,nodes,fleet")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, args.child)
        figures = measure(
            args.scenario,
            args.instances,
            args.batch,
            args.ccs,
            args.fleet_nodes,
            args.fleet_nice,
            args.clc_nice,
            args.describe_every,
        )
        print(json.dumps(figures))
        return
    wanted = args.scenarios.split(",")
    result: dict = {"benchmark": "control_plane_scale", "instances": args.instances, "batch": args.batch}
    if "baseline" in wanted:
        with tempfile.TemporaryDirectory(prefix="scale-baseline-") as scratch:
            base = Path(scratch) / "tree"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(base), args.baseline], check=True
            )
            try:
                result["baseline_nodes"] = {"commit": args.baseline, **run_child(base, "nodes", args)}
            finally:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)
    if "nodes" in wanted:
        result["this_tree_nodes"] = run_child(ROOT, "nodes", args)
    if "fleet" in wanted:
        result["this_tree_fleet"] = run_child(ROOT, "fleet", args)
    base_run, ours = result.get("baseline_nodes", {}), result.get("this_tree_nodes", {})
    if base_run.get("all_running_s") and ours.get("all_running_s"):
        result["speedup_all_running_1cc_4nc"] = round(base_run["all_running_s"] / ours["all_running_s"], 2)
        result["target_speedup"] = 3.0
    fleet = result.get("this_tree_fleet", {})
    if fleet:
        result["fleet_all_running_s"] = fleet.get("all_running_s")
        result["target_fleet_all_running_s"] = 60
        result["fleet_describe_all_during_launch_server_ms"] = fleet.get("describe_all_during_launch_server_ms")
        result["target_describe_all_server_ms"] = 100  # throughout the launch: its max
        result["fleet_nice"], result["clc_nice"] = fleet.get("fleet_nice"), fleet.get("clc_nice")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
