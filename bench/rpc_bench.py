"""Signed internal RPC against the same call unsigned, on loopback, in one run (issue 2's figures).

A server process (pinned to one core) serves one small operation twice: signed through common.rpc, and as a
plain unsigned aiohttp route doing the same JSON work. One client process (pinned to the other core) measures
sequential latency (one call in flight) and throughput (16 in flight) for each, with ECDSA P-256 and RSA-2048
component keys. Prints JSON.

    .venv/bin/python bench/rpc_bench.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web
from pydantic import BaseModel

from common import pki
from common.rpc import RpcClient, RpcServer
from common.signing import Identity, TrustStore


class Echo(BaseModel):
    instance_id: str
    state: str
    count: int


MESSAGE = Echo(instance_id="i-0a1b2c3d", state="Extant", count=7)


def make_pki(root: Path, key_type: str) -> pki.PkiDir:
    directory = pki.PkiDir(root / key_type)
    directory.init()
    directory.issue("server", "nc", key_type)
    directory.issue("client", "cc", key_type)
    return directory


def serve(pki_path: Path, port: int) -> None:
    os.sched_setaffinity(0, {1 % os.cpu_count()})
    directory = pki.PkiDir(pki_path)
    identity = Identity.from_files(directory.cert_path("server"), directory.key_path("server"))
    server = RpcServer(identity, TrustStore(pki.load_cert(directory.ca_path)))

    async def echo(message: Echo, _caller: object) -> Echo:
        return message

    async def plain(request: web.Request) -> web.Response:
        message = Echo.model_validate_json(await request.read())
        return web.Response(body=message.model_dump_json().encode(), content_type="application/json")

    server.add("Echo", echo, {"cc"}, Echo)
    app = web.Application()
    server.install(app)
    app.router.add_post("/plain/Echo", plain)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def measure(directory: pki.PkiDir, url: str, seconds: float) -> dict:
    os.sched_setaffinity(0, {0})
    identity = Identity.from_files(directory.cert_path("client"), directory.key_path("client"))
    client = RpcClient(identity, TrustStore(pki.load_cert(directory.ca_path)))
    session = client.session
    body = MESSAGE.model_dump_json().encode()

    async def signed_call() -> None:
        await client.call(url, "Echo", MESSAGE, Echo)

    async def plain_call() -> None:
        async with session.post(url + "/plain/Echo", data=body, headers={"Content-Type": "application/json"}) as r:
            Echo.model_validate_json(await r.read())

    async def latency(call, count: int = 300) -> float:
        samples = []
        for _ in range(count):
            start = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - start)
        return statistics.median(samples) * 1000

    async def rate(call, concurrency: int = 16) -> float:
        done = 0
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await call()
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - start)

    for call in (signed_call, plain_call):  # warm up connections and caches
        for _ in range(50):
            await call()
    result = {
        "unsigned_p50_ms": await latency(plain_call),
        "signed_p50_ms": await latency(signed_call),
        "unsigned_calls_per_s": await rate(plain_call),
        "signed_calls_per_s": await rate(signed_call),
    }
    result["added_ms_per_call"] = result["signed_p50_ms"] - result["unsigned_p50_ms"]
    result["signed_to_unsigned_rate_ratio"] = result["signed_calls_per_s"] / result["unsigned_calls_per_s"]
    await client.close()
    return {key: round(value, 3) for key, value in result.items()}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sign_cost(directory: pki.PkiDir, rounds: int = 500) -> dict:
    """Raw cost of one sign and one verify with this key type, in microseconds."""
    from common.signing import sign_bytes, verify_bytes

    identity = Identity.from_files(directory.cert_path("client"), directory.key_path("client"))
    data = b"x" * 200
    start = time.perf_counter()
    for _ in range(rounds):
        signature = sign_bytes(identity.key, data)
    signed = time.perf_counter()
    for _ in range(rounds):
        verify_bytes(identity.cert, signature, data)
    verified = time.perf_counter()
    return {
        "sign_us": round((signed - start) / rounds * 1e6, 1),
        "verify_us": round((verified - signed) / rounds * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--serve", nargs=2, metavar=("PKI", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), int(args.serve[1]))
        return
    report: dict = {"benchmark": "signed internal RPC vs unsigned, loopback", "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        for key_type in ("ec", "rsa"):
            directory = make_pki(Path(tmp), key_type)
            port = free_port()
            server = subprocess.Popen([sys.executable, __file__, "--serve", str(directory.path), str(port)])
            try:
                url = f"http://127.0.0.1:{port}"
                for _ in range(100):
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                        break
                    except OSError:
                        time.sleep(0.05)
                name = "ecdsa_p256" if key_type == "ec" else "rsa_2048"
                report[name] = {**asyncio.run(measure(directory, url, args.seconds)), **sign_cost(directory)}
            finally:
                server.send_signal(signal.SIGINT)
                server.wait(timeout=10)
    ec = report["ecdsa_p256"]
    report["targets"] = {
        "added_ms_per_call_le_1": ec["added_ms_per_call"] <= 1.0,
        "signed_calls_per_s_ge_2000": ec["signed_calls_per_s"] >= 2000,
    }
    report["choice"] = (
        "ecdsa_p256 for component keys"
        if ec["signed_calls_per_s"] > report["rsa_2048"]["signed_calls_per_s"]
        else "rsa_2048"
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
