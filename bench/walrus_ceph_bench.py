"""Walrus on Ceph (RADOS) against Walrus on the local disk, in the same run, printed as JSON.

One single-node Ceph cluster (cli/ceph_local.py: monitor, manager, one BlueStore OSD on a sparse file in the
bench's temporary directory, so both stores end on the same disk). Then, one after the other (never both at
once, so they do not share the 2 cores):
- Walrus with KOALA_WALRUS_STORAGE=local (the embedded default, the baseline);
- Walrus with KOALA_WALRUS_STORAGE=rados (object data in the pool, metadata in its own database);
- two rados Walruses at once (each its own namespace), clients split between them: the aggregate;
- Ceph's own S3 front end, the RADOS Gateway (Debian's radosgw, one process on the same cluster): the other
  way to Ceph the issue names, measured to choose between them.

Figures: 1 MiB PUT and GET MiB/s (16 in flight), 64 KiB GET requests/s (data in RADOS), 4 KiB GET requests/s
(wrk, 16 connections; objects up to 32 KiB live in the metadata database on both stores). Each figure is the
best of a few rounds.

Why librados and not RGW behind Walrus: Walrus must keep its own S3 semantics (accounts from the CLC, ACLs,
policies, versions, Object Lock, bundled images); behind RGW it would be a second S3 server proxying to a first,
every byte crossing two HTTP hops. librados gives it the objects directly. The radosgw figures show what Ceph's
own S3 server does on the same cluster (its small GETs under wrk stall on delayed ACKs: read them with care).

Usage: .venv/bin/python bench/walrus_ceph_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import boto3
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cpu_meter import CpuMeter
from bench.walrus_bench import get_rate, put_rate, wrk_rate
from cli.ceph_local import CephCluster
from tests.ceph import WALRUS_POOL, walrus_rados_settings
from tests.harness import Cloud, die_with_parent
from tests.walrus.conftest import USERS, write_credentials

KiB, MiB = 1 << 10, 1 << 20
CONCURRENCY = 16


class Front:
    """An S3 endpoint with a bucket `bench` and a presigning client for it."""

    def __init__(self, url: str, access: str, secret: str):
        self.s3 = boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id=access,
            aws_secret_access_key=secret,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
        )
        self.s3.create_bucket(Bucket="bench")

    def presign(self, method: str, key: str) -> str:
        return self.s3.generate_presigned_url(method, Params={"Bucket": "bench", "Key": key}, ExpiresIn=3600)

    def stop(self) -> None:
        return None


class WalrusFront(Front):
    """One Walrus process."""

    def __init__(self, work: Path, name: str, settings: dict[str, str]):
        credentials = work / f"{name}-credentials.json"
        write_credentials(credentials)
        extra = {"KOALA_WALRUS_CREDENTIALS_FILE": str(credentials), "KOALA_LOG_LEVEL": "WARNING", **settings}
        self.cloud = Cloud(work / name, roles=("walrus",), extra={"walrus": extra})
        self.cloud.start()
        access, secret, _, _ = USERS["alice"]
        super().__init__(self.cloud.url("walrus"), access, secret)

    def stop(self) -> None:
        self.cloud.stop()


def measure(
    fronts: list[Front], rounds: int, count_1m: int, seconds: int, meter: CpuMeter | None = None
) -> dict[str, float]:
    """The figures of `fronts` serving at once (clients split evenly between them); `meter` (bench/cpu_meter.py)
    accounts the CPU of the 1 MiB PUT and GET phases."""
    phase = meter.phase if meter is not None else (lambda _name: contextlib.nullcontext())
    body_1m = os.urandom(MiB)
    body_64k = os.urandom(64 * KiB)
    for front in fronts:
        front.s3.put_object(Bucket="bench", Key="small", Body=os.urandom(4 * KiB))
        front.s3.put_object(Bucket="bench", Key="mid", Body=body_64k)
    best: dict[str, float] = {}

    def keep(name: str, value: float) -> None:
        best[name] = round(max(best.get(name, 0.0), value), 1)

    async def split(run, urls: list[list[str]]) -> float:
        """Seconds for every front's share of URLs (urls[i] for fronts[i]), all at once."""
        start = time.perf_counter()
        await asyncio.gather(*(run(share, max(1, CONCURRENCY // len(fronts))) for share in urls))
        return time.perf_counter() - start

    for round_number in range(rounds):
        per_front = count_1m // len(fronts)
        keys = {i: [f"one-{round_number}-{n}" for n in range(per_front)] for i in range(len(fronts))}
        put_urls = [[f.presign("put_object", k) for k in keys[i]] for i, f in enumerate(fronts)]
        get_urls = [[f.presign("get_object", k) for k in keys[i]] for i, f in enumerate(fronts)]
        mids = 2000 // len(fronts)
        mid_urls = [[f.presign("get_object", "mid")] * mids for f in fronts]
        with phase("put_1MiB"):
            seconds_put = asyncio.run(split(lambda urls, c: put_rate(urls, body_1m, c), put_urls))
        keep("put_1MiB_MiB_per_s", per_front * len(fronts) / seconds_put)

        async def get_all(urls: list[str], c: int) -> None:
            await get_rate(urls, c)

        with phase("get_1MiB"):
            seconds_get = asyncio.run(split(get_all, get_urls))
        keep("get_1MiB_MiB_per_s", per_front * len(fronts) / seconds_get)
        seconds_mid = asyncio.run(split(get_all, mid_urls))
        keep("get_64KiB_requests_per_s", mids * len(fronts) / seconds_mid)
        if len(fronts) == 1:  # wrk drives one URL
            keep("get_4KiB_requests_per_s", wrk_rate(fronts[0].presign("get_object", "small"), seconds) or 0.0)
        for i, front in enumerate(fronts):  # keep the stores small between rounds
            front.s3.delete_objects(Bucket="bench", Delete={"Objects": [{"Key": k} for k in keys[i]]})
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and objects")
    args = parser.parse_args()
    rounds, count_1m, seconds = (2, 200, 3) if args.quick else (3, 400, 5)
    work = Path(tempfile.mkdtemp(prefix="walrus-ceph-bench-"))
    started = time.perf_counter()
    cluster = CephCluster.create(work / "ceph", preexec=die_with_parent)
    ceph_start = time.perf_counter() - started
    results: dict[str, object] = {"ceph": {"objectstore": "bluestore on a file", "start_seconds": round(ceph_start, 1)}}
    try:
        cluster.create_pool(WALRUS_POOL, "rados", pgs=32)
        front = WalrusFront(work, "local", {})
        try:
            local = measure([front], rounds, count_1m, seconds)
        finally:
            front.stop()
        front = WalrusFront(work, "rados", walrus_rados_settings(cluster, "bench-one"))
        try:
            rados_one = measure([front], rounds, count_1m, seconds)
        finally:
            front.stop()
        fronts = [WalrusFront(work, f"rados{i}", walrus_rados_settings(cluster, f"bench-two-{i}")) for i in range(2)]
        try:
            rados_two = measure(fronts, rounds, count_1m, seconds)
        finally:
            for front in fronts:
                front.stop()
        rgw_url = cluster.start_rgw(die_with_parent)
        rgw = measure([Front(rgw_url, *cluster.rgw_user("bench"))], rounds, count_1m, seconds)
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 3) if a and b else None

    results["local_one_front_end"] = local
    results["rados_one_front_end"] = rados_one
    results["rados_two_front_ends"] = rados_two
    results["radosgw_one_front_end"] = rgw
    results["ratios"] = {
        "rados_vs_local_get_4KiB": ratio(rados_one["get_4KiB_requests_per_s"], local["get_4KiB_requests_per_s"]),
        "rados_vs_local_get_64KiB": ratio(rados_one["get_64KiB_requests_per_s"], local["get_64KiB_requests_per_s"]),
        "rados_vs_local_put_1MiB": ratio(rados_one["put_1MiB_MiB_per_s"], local["put_1MiB_MiB_per_s"]),
        "rados_vs_local_get_1MiB": ratio(rados_one["get_1MiB_MiB_per_s"], local["get_1MiB_MiB_per_s"]),
        "two_vs_one_front_end_put_1MiB": ratio(rados_two["put_1MiB_MiB_per_s"], rados_one["put_1MiB_MiB_per_s"]),
        "two_vs_one_front_end_get_1MiB": ratio(rados_two["get_1MiB_MiB_per_s"], rados_one["get_1MiB_MiB_per_s"]),
        "walrus_rados_vs_radosgw": {name: ratio(rados_one[name], rgw[name]) for name in rados_one if rgw.get(name)},
    }
    results["targets"] = {
        "get_4KiB": "rados >= 0.5 x local (one front end)",
        "aggregate_1MiB": "two front ends >= 1.6 x one (issue 23; here two front ends with their own namespaces "
        "and databases, on a 2-core machine)",
    }
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
