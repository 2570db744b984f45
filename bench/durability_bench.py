"""Durability and convergence under kill -9, the long run (tests/hardening/test_durability.py is the short one):

1. s3: writers PUT objects while Walrus is killed and restarted every few seconds; every acknowledged object is
   read back after a last crash: acknowledged, lost, corrupted, leaked (data files left once all is deleted).
2. launches: RunInstances and terminations while the CLC, the CC and the NC are killed in turn; then all is
   terminated: acknowledged, lost (acknowledged instances the API no longer knows), leaked (instances not
   terminated, instance directories, capacity not given back) and converge_seconds.

The baseline in the same run is the same loop without kills (acknowledged per second, converge_seconds).

    .venv/bin/python bench/durability_bench.py [--seconds 60] [--every 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.clc.compute_cloud import bundle_and_upload
from tests.hardening.durability import ec2_client, launches_under_kills, s3_under_kills
from tests.harness import Cloud

NEVER = 1e9  # a kill interval longer than the run: the baseline without kills


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each loop")
    parser.add_argument("--every", type=float, default=4.0, help="mean seconds between two kills")
    args = parser.parse_args()
    results: dict[str, object] = {"seconds": args.seconds, "kill_every": args.every}
    with tempfile.TemporaryDirectory() as tmp:
        cloud = Cloud(Path(tmp) / "cloud")
        try:
            cloud.start()
            location = bundle_and_upload(cloud, Path(tmp) / "bundle", "machine", "durability")
            image = ec2_client(cloud).register_image(ImageLocation=location, Name="durability")["ImageId"]
            for name, run in (
                ("s3", lambda every, n: s3_under_kills(cloud, args.seconds, every, bucket=f"durable{n}")),
                ("launches", lambda every, n: launches_under_kills(cloud, image, args.seconds, every)),
            ):
                for label, every in (("baseline_no_kills", NEVER), ("under_kills", args.every)):
                    started = time.monotonic()
                    figures = run(every if every != NEVER else args.seconds * 2, len(results))
                    entry = figures.as_dict()
                    entry["acknowledged_per_second"] = round(figures.acknowledged / args.seconds, 1)
                    entry["wall_seconds"] = round(time.monotonic() - started, 1)
                    results[f"{name}_{label}"] = entry
                    print(f"{name} {label}: {json.dumps(entry)}", file=sys.stderr)
        finally:
            cloud.stop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
