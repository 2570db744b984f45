"""What the connection limits and timeouts cost (common/http_site.py), in one run:

The same aiohttp application (a `/healthz`-like GET and a 64 KiB PUT echoing its size) is served by a server
process in two ways, started alternately: `plain`, aiohttp's own TCPSite as the services had before (no limits,
no timeouts), and `guarded`, the services' HttpSite with its ConnectionGuard (middleware, per-peer counts,
sweeps, limits). For each: throughput with 32 keep-alive connections busy, and sequential latency (one request in
flight), for GET and PUT, over several alternating rounds; and, since this machine is shared and wall-clock rates
swing, the server process's own CPU time per request (user + system, from /proc), which is what the listener
costs. The JSON gives the medians and guarded/plain ratios. Target: CPU per request within 5 %.

    .venv/bin/python bench/limits_bench.py [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from aiohttp import web

from common.http_site import ConnectionGuard, HttpSite, Limits

BODY = b"x" * (64 << 10)
CONCURRENCY = 32


async def serve(kind: str, port: int) -> None:
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def put(request: web.Request) -> web.Response:
        return web.Response(text=f"{len(await request.read())}\n")

    guard = ConnectionGuard(Limits())
    app = web.Application(middlewares=[guard.middleware] if kind == "guarded" else [])
    app.router.add_get("/healthz", healthz)
    app.router.add_put("/put", put)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=30)
    await runner.setup()
    site = HttpSite(runner, "127.0.0.1", port, guard) if kind == "guarded" else web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def throughput(url: str, method: str, seconds: float, pid: int) -> tuple[float, float]:
    """(requests per second, server CPU microseconds per request)."""
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    count = 0
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal count
            while time.monotonic() < deadline:
                async with session.request(method, url, data=BODY if method == "PUT" else None) as response:
                    await response.read()
                count += 1

        started, cpu = time.monotonic(), cpu_seconds(pid)
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return count / (time.monotonic() - started), (cpu_seconds(pid) - cpu) / count * 1e6


async def latency(url: str, method: str, seconds: float) -> float:
    samples = []
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            async with session.request(method, url, data=BODY if method == "PUT" else None) as response:
                await response.read()
            samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def measure(kind: str, seconds: float) -> dict[str, float]:
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", kind, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        base = f"http://127.0.0.1:{port}"

        async def run() -> dict[str, float]:
            get_rate, get_cpu = await throughput(base + "/healthz", "GET", seconds, server.pid)
            put_rate, put_cpu = await throughput(base + "/put", "PUT", seconds, server.pid)
            return {
                "get_server_cpu_us": get_cpu,
                "put_64k_server_cpu_us": put_cpu,
                "get_per_second": get_rate,
                "put_64k_per_second": put_rate,
                "get_p50_ms": await latency(base + "/healthz", "GET", seconds / 2),
                "put_64k_p50_ms": await latency(base + "/put", "PUT", seconds / 2),
            }

        return asyncio.run(run())
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve[0], int(args.serve[1])))
        return
    rounds: dict[str, list[dict[str, float]]] = {"plain": [], "guarded": []}
    for _ in range(args.rounds):
        for kind in rounds:  # alternating, so a busier moment of the machine hits both
            rounds[kind].append(measure(kind, args.seconds))
    medians = {
        kind: {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]} for kind, runs in rounds.items()
    }
    ratios = {k: round(medians["guarded"][k] / medians["plain"][k], 3) for k in medians["plain"]}
    # The listener's own cost: the server's CPU per request may not rise by more than 5 %.
    within = all(ratios[k] <= 1.05 for k in ratios if k.endswith("cpu_us"))
    report = {**medians, "guarded_over_plain": ratios, "within_5_percent": within}
    print(json.dumps({**report, "rounds": args.rounds, "seconds": args.seconds}, indent=2))


if __name__ == "__main__":
    main()
