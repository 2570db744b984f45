"""Cloud Controller EC2 API throughput and latency against a real CLC process.

Measured in one run, with the same client (aiohttp, keep-alive, N concurrent requests, a fresh SigV4 signature
per request; client and CLC pinned to different cores when there are two):
- baseline: `GET /healthz` on the same CLC (the floor of aiohttp + the client on this machine),
- describe_key_pairs: `DescribeKeyPairs` (SigV4 auth, parameters parsed against botocore's model, a database
  read, XML serialized from the model) with 20 key pairs in the account; target >= 1,000 requests/s.
More sections can be added to `run()` (e.g. DescribeInstances over many instances) using `load()`.
- describe_instances: `DescribeInstances` over 10,000 instances, p50 vs an empty account (target <= 300 ms;
  from bench/clc_compute_bench.py, which also measures RunInstances -> running).

    .venv/bin/python bench/clc_bench.py [--seconds 5] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.harness import Cloud

REGION = "eucalyptus"
CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"
TARGET_RPS = 1000


def sigv4_headers(url: str, body: bytes, access_key: str, secret: str) -> dict[str, str]:
    """SigV4 for an EC2 form POST, by botocore's own signer (the client the CLC must satisfy)."""
    request = AWSRequest("POST", url, data=body, headers={"Content-Type": CONTENT_TYPE})
    SigV4Auth(Credentials(access_key, secret), "ec2", REGION).add_auth(request)
    return dict(request.headers.items())


async def load(send: Callable, seconds: float, concurrency: int, check: Callable[[int, bytes], bool]) -> dict:
    """Keep `concurrency` requests in flight for `seconds`; requests/s and latency percentiles."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm up connections and caches.
        await asyncio.gather(*(send(session) for _ in range(concurrency)))

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                status, body = await send(session)
                latencies.append(time.perf_counter() - start)
                if not check(status, body):
                    errors += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
    }


def ec2_sender(url: str, params: str, access_key: str, secret: str) -> Callable:
    body = params.encode()

    async def send(session: aiohttp.ClientSession) -> tuple[int, bytes]:
        async with session.post(url, data=body, headers=sigv4_headers(url, body, access_key, secret)) as response:
            return response.status, await response.read()

    return send


def get_sender(url: str) -> Callable:
    async def send(session: aiohttp.ClientSession) -> tuple[int, bytes]:
        async with session.get(url) as response:
            return response.status, await response.read()

    return send


def pin(cloud: Cloud) -> str:
    """CLC on core 0, this client on core 1 (when there are two), so they do not take turns on one core."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return "not pinned (one core)"
    os.sched_setaffinity(cloud.processes["clc"].pid, {cpus[0]})
    os.sched_setaffinity(0, {cpus[1]})
    return f"clc on cpu {cpus[0]}, client on cpu {cpus[1]}"


def run(cloud: Cloud, seconds: float, concurrency: int) -> dict:
    rc = cloud.admin_credentials()
    access_key, secret, url = rc["EC2_ACCESS_KEY"], rc["EC2_SECRET_KEY"], rc["EC2_URL"]
    ec2 = boto3.client(
        "ec2", endpoint_url=url, region_name=REGION, aws_access_key_id=access_key, aws_secret_access_key=secret
    )
    for index in range(20):
        ec2.import_key_pair(KeyName=f"bench-{index:02d}", PublicKeyMaterial=_public_key())
    results: dict = {"pinning": pin(cloud), "concurrency": concurrency, "seconds": seconds}
    baseline = asyncio.run(load(get_sender(cloud.url("clc") + "/healthz"), seconds, concurrency, _ok))
    results["baseline_healthz"] = baseline

    def describe_ok(status: int, body: bytes) -> bool:
        return status == 200 and body.count(b"<item>") >= 20

    describe = asyncio.run(
        load(
            ec2_sender(url, "Action=DescribeKeyPairs&Version=2016-11-15", access_key, secret),
            seconds,
            concurrency,
            describe_ok,
        )
    )
    results["describe_key_pairs"] = {
        **describe,
        "target_requests_per_s": TARGET_RPS,
        "meets_target": describe["requests_per_s"] >= TARGET_RPS and describe["errors"] == 0,
        "ratio_to_baseline": round(describe["requests_per_s"] / baseline["requests_per_s"], 3),
    }
    return results


_KEY: bytes | None = None


def _public_key() -> bytes:
    global _KEY
    if _KEY is None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
        _KEY = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return _KEY


def _ok(status: int, body: bytes) -> bool:
    return status == 200


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--instances", type=int, default=10000, help="instances for the DescribeInstances figure (0: skip it)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clc-bench-") as tmp:
        cloud = Cloud(Path(tmp) / "cloud", roles=("clc",), extra={"clc": {"KOALA_LOG_LEVEL": "WARNING"}})
        cloud.start("clc")
        try:
            results = run(cloud, args.seconds, args.concurrency)
        finally:
            cloud.stop()
        if args.instances:
            # DescribeInstances over many instances (its own CLC, instances written into its database).
            from bench.clc_compute_bench import describe_instances_section

            results["describe_instances"] = describe_instances_section(Path(tmp), args.instances, 15)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
