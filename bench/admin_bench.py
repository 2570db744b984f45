"""Admin page figures, against a real cloud (CLC, Walrus, CC, NC on libvirt's test driver):

1. pages: server-side render time of every admin page, p50/p95 over sequential signed-in GETs, with an account
   holding `--instances` instances (written into the CLC's database while it is stopped, as a restart finds
   them; the instances page renders at most 500 rows of them). Baselines in the same run: `GET /healthz` (the
   HTTP floor) and `DescribeInstances` through the EC2 API for the same instances (the API the pages stand beside).
   Our target: every page p50 <= 100 ms.
2. sign_in: POST /admin/login with the right password, p50 (the scrypt hash costs most of it, on purpose).

    .venv/bin/python bench/admin_bench.py [--instances 2000] [--requests 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench.clc_bench import sigv4_headers
from bench.clc_compute_bench import populate
from tests.harness import Cloud

TARGET_PAGE_P50_MS = 100.0
PAGES = (
    "/admin/",
    "/admin/instances",
    "/admin/instances?state=running&q=i-000001",
    "/admin/images",
    "/admin/clusters",
    "/admin/vmtypes",
    "/admin/accounts",
    "/admin/network",
)
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def summary(latencies: list[float]) -> dict:
    latencies = sorted(latencies)
    return {
        "requests": len(latencies),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p95_ms": round(latencies[max(int(len(latencies) * 0.95) - 1, 0)] * 1000, 1),
    }


async def sign_in(session: aiohttp.ClientSession, base: str, password: str) -> float:
    async with session.get(f"{base}/admin/login") as reply:
        token = CSRF.search(await reply.text()).group(1)
    form = {"csrf": token, "next": "/admin/", "login": "admin", "password": password}
    start = time.perf_counter()
    async with session.post(f"{base}/admin/login", data=form, allow_redirects=False) as reply:
        await reply.read()
        if reply.status != 303 or "/admin/login" in reply.headers.get("Location", ""):
            raise RuntimeError(f"sign-in failed: HTTP {reply.status} {reply.headers.get('Location')}")
    return time.perf_counter() - start


async def timed_gets(session: aiohttp.ClientSession, url: str, requests: int) -> dict:
    latencies = []
    for index in range(requests + 2):  # two warm-up requests
        start = time.perf_counter()
        async with session.get(url, allow_redirects=False) as reply:
            body = await reply.read()
            if reply.status != 200:
                raise RuntimeError(f"GET {url}: HTTP {reply.status}: {body[:300]!r}")
        if index >= 2:
            latencies.append(time.perf_counter() - start)
    return {**summary(latencies), "bytes": len(body)}


async def timed_describe(url: str, rc: dict, requests: int) -> dict:
    body = b"Action=DescribeInstances&Version=2016-11-15"
    latencies = []
    async with aiohttp.ClientSession() as session:
        for index in range(requests + 2):
            headers = sigv4_headers(url, body, rc["EC2_ACCESS_KEY"], rc["EC2_SECRET_KEY"])
            start = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as reply:
                payload = await reply.read()
                if reply.status != 200:
                    raise RuntimeError(f"DescribeInstances: HTTP {reply.status}: {payload[:300]!r}")
            if index >= 2:
                latencies.append(time.perf_counter() - start)
    return {**summary(latencies), "instances_in_answer": payload.count(b"<instanceId>")}


async def measure(cloud: Cloud, password: str, requests: int) -> dict:
    base = cloud.url("clc")
    rc = cloud.admin_credentials()
    results: dict = {"baseline_healthz": None, "baseline_describe_instances": None, "pages": {}}
    sign_ins = []
    for _ in range(5):  # each a new browser: the sign-in form is only shown without a session
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as fresh:
            sign_ins.append(await sign_in(fresh, base, password))
    results["sign_in"] = summary(sign_ins)
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for an IP-address host
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        await sign_in(session, base, password)
        results["baseline_healthz"] = await timed_gets(session, f"{base}/healthz", requests)
        for path in PAGES:
            results["pages"][path] = await timed_gets(session, base + path, requests)
    results["baseline_describe_instances"] = await timed_describe(rc["EC2_URL"], rc, requests)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="admin-bench-") as tmp:
        cloud = Cloud(Path(tmp) / "cloud", extra={"clc": {"KOALA_LOG_LEVEL": "WARNING"}, "nc": {"HYPERVISOR": "test"}})
        try:
            cloud.start()
            password = (cloud.dir / "data" / "clc" / "admin" / "web-password").read_text().strip()
            cloud.stop("clc")
            populate(cloud.dir / "data" / "clc" / "clc.db", cloud.admin_credentials()["EC2_USER_ID"], args.instances)
            cloud.start("clc")
            time.sleep(2)  # the CLC loads and serializes the instances in the background after a start
            results = asyncio.run(measure(cloud, password, args.requests))
        finally:
            cloud.stop()
    slowest = max(results["pages"].items(), key=lambda item: item[1]["p50_ms"])
    results.update(
        instances=args.instances,
        target_page_p50_ms=TARGET_PAGE_P50_MS,
        slowest_page=slowest[0],
        meets_target=slowest[1]["p50_ms"] <= TARGET_PAGE_P50_MS,
        slowest_page_to_describe_instances=round(
            slowest[1]["p50_ms"] / max(results["baseline_describe_instances"]["p50_ms"], 0.001), 2
        ),
    )
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
