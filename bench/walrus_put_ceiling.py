"""Where the durable 4 KiB PUT's ceiling is (issue 18), printed as JSON: what the same client (presigned PUTs of new
4 KiB objects, 16 requests in flight, as bench/walrus_s3_compare.py) gets from

- `one_walrus`: one Walrus, all 16 connections;
- `two_walrus`: two Walrus processes, each with its own state directory and 8 of the connections. Nothing is shared
  between them, so nothing has to be kept coherent: an upper bound for any Walrus made of two processes (front ends
  on one port sharing one store would add the cost of sharing);
- `aiohttp_floor`: an aiohttp app on uvloop, as Walrus serves, that reads each body and answers 200 with an ETag:
  the web framework's own cost, the floor under any Python front end on it.

Measured in turns, round after round (the machine is shared); each figure is the median round. Per configuration:
PUTs per second, the cores the servers and the client used, and the servers' CPU microseconds per PUT.

Usage: .venv/bin/python bench/walrus_put_ceiling.py [--rounds N] [--puts N]

Session 11, three runs (5 rounds of 6,000 PUTs): two Walrus processes that share nothing reach 1.05x, 1.07x and
1.11x one Walrus (2,655 against 2,532 PUTs/s in the last; one Walrus at 0.84-0.88 of a core, the two at 1.10-1.12
together, the machine never past 1.6 of its 2 cores). At 16 requests in flight each Walrus holds 8 and waits on
its own commit pipeline, so a second process buys little. The aiohttp floor costs 48-68 us of server CPU per PUT
(9,000-12,000 PUTs/s, bound by this Python client at a full core) against Walrus's 300-355 us in these longer
rounds: what is left to win is in Walrus's own code, on one interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import s3_servers
from bench.cpu_meter import CpuMeter
from bench.walrus_s3_compare import Target, transfer
from tests.harness import die_with_parent, free_port

BODY = os.urandom(4096)
IN_FLIGHT = 16


def serve_floor(port: int) -> None:
    import uvloop
    from aiohttp import web

    async def put(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(headers={"ETag": '"0123456789abcdef0123456789abcdef"'})

    app = web.Application()
    app.router.add_route("PUT", "/{tail:.*}", put)
    web.run_app(app, host="127.0.0.1", port=port, loop=uvloop.new_event_loop(), print=None, access_log=None)


@contextlib.contextmanager
def floor_server() -> Iterator[tuple[str, int]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve-floor", str(port)], preexec_fn=die_with_parent, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                asyncio.run(transfer("PUT", [f"http://127.0.0.1:{port}/ready"], BODY, 1))
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        process.wait(timeout=15)


class Configuration:
    """Servers and the URLs of each round's PUTs, the 16 connections split evenly between the servers."""

    def __init__(self, name: str, targets: list[Target] | None = None, floor: tuple[str, int] | None = None):
        self.name, self.targets, self.floor = name, targets or [], floor
        self.meter = CpuMeter({"servers": [t.server.pid for t in self.targets] + ([floor[1]] if floor else [])})
        self.round = 0

    def urls(self, count: int) -> list[list[str]]:
        self.round += 1
        if self.floor is not None:
            return [[f"{self.floor[0]}/bench/r{self.round}-{i}" for i in range(count)]]
        share = count // len(self.targets)
        return [[t.presign("put_object", f"r{self.round}-{i}") for i in range(share)] for t in self.targets]

    def measure(self, count: int) -> dict[str, float]:
        batches = self.urls(count)
        per_server = IN_FLIGHT // len(batches)

        async def run() -> None:
            await asyncio.gather(*(transfer("PUT", urls, BODY, per_server) for urls in batches))

        phase = f"round{self.round}"
        with self.meter.phase(phase):
            asyncio.run(run())
        used = self.meter.report()[phase]
        puts = sum(len(urls) for urls in batches)
        return {
            "puts_per_s": puts / used["wall_s"],
            "server_cores": used["cores_used"]["servers"],
            "client_cores": used["cores_used"]["client"],
            "server_us_per_put": used["cpu_s"]["servers"] / puts * 1e6,
            "machine_busy_cores": used["machine_busy_cores"],
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--puts", type=int, default=6000, help="PUTs per configuration per round")
    parser.add_argument("--serve-floor", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_floor:
        serve_floor(args.serve_floor)
        return 0
    with tempfile.TemporaryDirectory(dir="/var/tmp") as work, contextlib.ExitStack() as stack:
        walruses = [stack.enter_context(s3_servers.walrus(Path(work) / f"walrus{i}")) for i in range(3)]
        targets = [Target(server) for server in walruses]
        configurations = [
            Configuration("one_walrus", targets[:1]),
            Configuration("two_walrus", targets[1:]),
            Configuration("aiohttp_floor", floor=stack.enter_context(floor_server())),
        ]
        for configuration in configurations:  # a first round each, not counted: connections, caches, files
            configuration.measure(1000)
        rounds: dict[str, list[dict[str, float]]] = {c.name: [] for c in configurations}
        for _ in range(args.rounds):
            for configuration in configurations:
                rounds[configuration.name].append(configuration.measure(args.puts))
    result = {
        name: {field: round(statistics.median(r[field] for r in found), 2) for field in found[0]}
        for name, found in rounds.items()
    }
    result["two_walrus_over_one"] = round(result["two_walrus"]["puts_per_s"] / result["one_walrus"]["puts_per_s"], 3)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
