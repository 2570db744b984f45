"""Cloud bursting overhead, between two real Koala clouds (libvirt's test driver on both NCs):

A burst launch (RunInstances on the local cloud into its remote zone: CLC admission, the remote zone's CC, the
remote's RunInstances) against calling the remote cloud's RunInstances directly with the same parameters (image,
type, key pair, security group, user data), alternated, one instance each:
- api: RunInstances sent -> answered;
- to_running: RunInstances sent -> the instance shows `running` in the API the client used, a DescribeInstances
  sent every POLL_SECONDS: as the remote zone's CC sends its polls of a starting instance (a fair baseline: the
  direct client notices the remote's change as fast as the CC can).
Target: burst / direct at most 1.2 (p50). Each instance is terminated before the next launch.

    .venv/bin/python bench/burst_bench.py [--launches 15]

Where a burst launch's extra time goes (session 9, a timestamp at each step in every process, 30 launches of each
kind, medians; the direct instance ran ~19-25 ms after its RunInstances was sent):
- before the remote hears of it, ~5.5 ms more than a direct call (~1.1 ms): the local CLC's checks and records
  (~1.5 ms), its signed call to the CC (~1 ms), the CC's record (~0.5-1 ms), the CC's signed EC2 request;
- at the remote, ~0.7 ms more: the tags of the remote instance written, and the local services' work on 2 cores;
- after the remote instance runs, ~4-5 ms more: the CC's next probe (sent every POLL_SECONDS; ~3 ms to see it) and
  its push to the CLC (~1 ms); the client's own poll then waits as the direct client's does.
Each hop costs ~1 ms of Python on this machine: two hops before and one poll and one push after are ~7 ms, more
than 1.2x of a ~20 ms start leaves (4 ms). Against a guest that boots in seconds the ratio is ~1.
Session 9: no push of the RunInstances answer (it held `running` behind it), no terminated instances in the full
sync (the CC's CPU per launch halved), probes spaced from sending to sending, the remote's RunInstances sent before
the CC answers the CLC. --launches 30: 1.41x (8.9 ms over 21.8) and 1.60x (11.6 ms over 19.3) with the machine's
load at 1-2, 1.45x-1.59x (11-14.5 ms over ~24.5) at 3.4; 1.61x (12.3 ms over 20.1) before, on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.bursting.support import BURST_ZONE, World
from tests.waiting import wait_for

USER_DATA = "#!/bin/sh\necho bench\n"
POLL_SECONDS = 0.005  # the client's wait between DescribeInstances, and the CC's (KOALA_REMOTE_POLL_SECONDS)


def _state(ec2, instance_id: str) -> str:
    reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return reservations[0]["Instances"][0]["State"]["Name"] if reservations else ""


def _launch(ec2, params: dict) -> tuple[float, float, str]:
    start = time.perf_counter()
    instance_id = ec2.run_instances(**params)["Instances"][0]["InstanceId"]
    answered = time.perf_counter() - start
    _poll_running(ec2, instance_id)
    return answered, time.perf_counter() - start, instance_id


def _poll_running(ec2, instance_id: str, timeout: float = 60.0) -> None:
    """DescribeInstances sent every POLL_SECONDS (from one sending to the next, as the CC's start watch) until the
    instance is running."""
    deadline = time.monotonic() + timeout
    while True:
        sent = time.monotonic()
        if _state(ec2, instance_id) == "running":
            return
        if sent > deadline:
            raise AssertionError(f"{instance_id} not running after {timeout} s")
        time.sleep(max(sent + POLL_SECONDS - time.monotonic(), 0))


def _summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 1),
        "min_ms": round(ordered[0] * 1000, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="burst-bench-") as tmp:
        # The remote zone as configured by default (the tests' World deletes remote key pairs and groups at once).
        world = World(
            Path(tmp),
            proxy=False,
            cc_settings={"KOALA_REMOTE_KEEP_UNUSED": 60, "KOALA_REMOTE_POLL_SECONDS": POLL_SECONDS},
        )
        try:
            local, remote = world.local_ec2(), world.remote_ec2_once()
            world.wait_zone(BURST_ZONE)
            key = local.create_key_pair(KeyName="bench")
            remote.import_key_pair(KeyName="bench", PublicKeyMaterial=_public_key(key["KeyMaterial"]))
            for ec2 in (local, remote):
                ec2.create_security_group(GroupName="bench", Description="bench")
                ec2.authorize_security_group_ingress(
                    GroupName="bench", IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="0.0.0.0/0"
                )
            common = {
                "MinCount": 1,
                "MaxCount": 1,
                "InstanceType": "m1.small",
                "KeyName": "bench",
                "SecurityGroups": ["bench"],
                "UserData": USER_DATA,
            }
            burst_params = {**common, "ImageId": world.local_image, "Placement": {"AvailabilityZone": BURST_ZONE}}
            direct_params = {**common, "ImageId": world.remote_image}
            _launch_and_end(local, burst_params, world)  # warm-up: key pair and group made remotely
            results: dict[str, dict[str, list[float]]] = {
                "burst": {"api": [], "to_running": []},
                "direct": {"api": [], "to_running": []},
            }
            for _ in range(args.launches):
                for name, ec2, params in (("direct", remote, direct_params), ("burst", local, burst_params)):
                    api, running, _ = _launch_and_end(ec2, params, world)
                    results[name]["api"].append(api)
                    results[name]["to_running"].append(running)
            report: dict = {"launches": args.launches, "poll_seconds": POLL_SECONDS}
            for measure in ("api", "to_running"):
                burst, direct = _summary(results["burst"][measure]), _summary(results["direct"][measure])
                report[measure] = {
                    "burst": burst,
                    "direct": direct,
                    "ratio_p50": round(burst["p50_ms"] / direct["p50_ms"], 2),
                    # What bursting adds, in ms: against a guest that boots in seconds the ratio is ~1 whatever it is.
                    "overhead_p50_ms": round(burst["p50_ms"] - direct["p50_ms"], 1),
                    "target_ratio": 1.2,
                }
            print(json.dumps(report, indent=2))
        finally:
            world.stop()
    return 0


def _launch_and_end(ec2, params: dict, world: World) -> tuple[float, float, str]:
    api, running, instance_id = _launch(ec2, params)
    ec2.terminate_instances(InstanceIds=[instance_id])
    wait_for(lambda: _state(ec2, instance_id) == "terminated", 60, interval=0.02, what=f"{instance_id} terminated")
    wait_for(lambda: not world.remote_instances(), 60, interval=0.02, what="the remote cloud empty")
    return api, running, instance_id


def _public_key(private_pem: str) -> bytes:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


if __name__ == "__main__":
    sys.exit(main())
