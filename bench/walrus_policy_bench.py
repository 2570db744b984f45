"""The cost of a bucket policy, printed as JSON: 4 KiB GETs (wrk, 16 connections, presigned SigV4 URLs) of the same
object in a bucket with a 20-statement policy and in a bucket with none, measured in the same run, rounds
alternating. The policy mixes principals, wildcard actions and resources and string, numeric, date, IP and bool
conditions; nine of its statements reach the request and are evaluated. Target: at most 1.1x.

The figure compared is Walrus's CPU time per request (from /proc, best round): on a machine shared with other work
the request rate swings with their load, CPU per request much less. Rates are printed too, and one policy
evaluation timed in-process, uncached and for a repeated request (decisions are remembered per caller, action,
resource and the values of the keys the statements read).

Usage: .venv/bin/python bench/walrus_policy_bench.py [--seconds N] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path

import boto3
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.walrus.s3 import policy as policies
from tests.harness import Cloud
from tests.walrus.conftest import USERS, write_credentials

BUCKETS = ("plain", "guarded")


def twenty_statements(bucket: str) -> dict:
    """19 statements that do not apply to the benchmark's request, evaluated in full, and one Allow that does."""
    arn = f"arn:aws:s3:::{bucket}"
    statements = []
    for i in range(19):
        kind = i % 5
        statement: dict = {"Sid": f"s{i}", "Effect": "Deny" if i % 2 else "Allow"}
        if kind == 0:
            statement |= {
                "Principal": {"AWS": f"arn:aws:iam::{900000000000 + i}:root"},
                "Action": "s3:*",
                "Resource": [arn, f"{arn}/*"],
            }
        elif kind == 1:
            statement |= {"Principal": "*", "Action": ["s3:Put*", "s3:Delete*"], "Resource": f"{arn}/private-{i}/*"}
        elif kind == 2:
            statement |= {
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": f"{arn}/*",
                "Condition": {"IpAddress": {"aws:SourceIp": [f"198.51.{i}.0/24", "203.0.113.0/24"]}},
            }
        elif kind == 3:
            statement |= {
                "Principal": "*",
                "Action": "s3:Get*",
                "Resource": f"{arn}/*",
                "Condition": {
                    "StringLike": {"aws:UserAgent": f"*robot-{i}*"},
                    "DateGreaterThan": {"aws:CurrentTime": "2999-01-01T00:00:00Z"},
                },
            }
        else:
            statement |= {
                "Principal": "*",
                "NotAction": "s3:GetObject",
                "Resource": f"{arn}/*",
                "Condition": {"Bool": {"aws:SecureTransport": "true"}, "NumericLessThan": {"s3:max-keys": "5"}},
            }
        statements.append(statement)
    statements.append(
        {
            "Sid": "owner",
            "Effect": "Allow",
            "Principal": {"AWS": "111111111111"},
            "Action": "s3:GetObject",
            "Resource": f"{arn}/*",
            "Condition": {"StringEquals": {"aws:PrincipalType": "User"}},
        }
    )
    return {"Version": "2012-10-17", "Statement": statements}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk_run(url: str, seconds: int, pid: int) -> tuple[float, float]:
    """(requests/s, Walrus CPU microseconds per request) of one wrk run. CPU per request is the steadier figure
    on a shared machine: other work slows the rate but not the CPU each request costs."""
    before = cpu_seconds(pid)
    out = subprocess.run(
        ["wrk", "-t2", "-c16", f"-d{seconds}s", url], capture_output=True, text=True, timeout=seconds + 30
    ).stdout
    used = cpu_seconds(pid) - before
    if re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        raise RuntimeError(f"wrk saw errors: {out}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    if not rate or not count:
        raise RuntimeError(f"no rate from wrk: {out}")
    return float(rate.group(1)), used / int(count.group(1)) * 1e6


def evaluator_micros(document: dict, bucket: str, cached: bool = True) -> float:
    """One evaluation in-process: of a repeated request, or (cached=False) of a fresh policy each time."""
    compiled = policies.parse(json.dumps(document), bucket)
    caller = policies.Caller("111111111111", "alice")
    values = {
        "aws:sourceip": ["127.0.0.1"],
        "aws:principaltype": ["User"],
        "aws:useragent": ["wrk"],
        "aws:securetransport": ["false"],
        "aws:currenttime": ["2026-01-01T00:00:00Z"],
    }

    def once() -> None:
        cache: dict = {}
        lookup = lambda key: cache.setdefault(key, values.get(key))  # noqa: E731
        if not cached:
            compiled._decided.clear()
        assert compiled.evaluate(caller, "s3:GetObject", f"arn:aws:s3:::{bucket}/obj", lookup) == "Allow"

    runs = 20000
    return timeit.timeit(once, number=runs) / runs * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="length of one wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the two buckets alternating")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print(json.dumps({"error": "wrk is not installed (deploy/bootstrap.sh installs it)"}))
        return 1
    work = Path(tempfile.mkdtemp(prefix="walrus-policy-bench-"))
    cloud = None
    try:
        credentials = work / "credentials.json"
        write_credentials(credentials)
        cloud = Cloud(
            work / "cloud",
            roles=("walrus",),
            extra={"walrus": {"KOALA_WALRUS_CREDENTIALS_FILE": str(credentials), "KOALA_LOG_LEVEL": "WARNING"}},
        )
        cloud.start()
        access, secret, _, _ = USERS["alice"]
        s3 = boto3.client(
            "s3",
            endpoint_url=cloud.url("walrus"),
            aws_access_key_id=access,
            aws_secret_access_key=secret,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
        )
        body = b"p" * 4096
        urls = {}
        for bucket in BUCKETS:
            s3.create_bucket(Bucket=bucket)
            s3.put_object(Bucket=bucket, Key="obj", Body=body)
            urls[bucket] = s3.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": "obj"}, ExpiresIn=3600
            )
        document = twenty_statements("guarded")
        s3.put_bucket_policy(Bucket="guarded", Policy=json.dumps(document))
        assert len(json.loads(s3.get_bucket_policy(Bucket="guarded")["Policy"])["Statement"]) == 20
        pid = cloud.processes["walrus"].pid
        for bucket in BUCKETS:  # both answer, and warm
            wrk_run(urls[bucket], 1, pid)
        rates: dict[str, list[float]] = {bucket: [] for bucket in BUCKETS}
        cpu: dict[str, list[float]] = {bucket: [] for bucket in BUCKETS}
        for _ in range(args.rounds):
            for bucket in BUCKETS:
                rate, micros = wrk_run(urls[bucket], args.seconds, pid)
                rates[bucket].append(rate)
                cpu[bucket].append(micros)
        plain_cpu, guarded_cpu = min(cpu["plain"]), min(cpu["guarded"])
        result = {
            "request": "GET 4 KiB object, presigned SigV4, wrk -t2 -c16",
            "no_policy_cpu_us_per_request": round(plain_cpu, 1),
            "policy_20_statements_cpu_us_per_request": round(guarded_cpu, 1),
            "cpu_ratio_policy_vs_none": round(guarded_cpu / plain_cpu, 3),
            "no_policy_requests_per_s": round(max(rates["plain"]), 1),
            "policy_20_statements_requests_per_s": round(max(rates["guarded"]), 1),
            "rate_ratio_none_vs_policy": round(max(rates["plain"]) / max(rates["guarded"]), 3),
            "target_ratio_at_most": 1.1,
            "rounds": {
                bucket: {
                    "requests_per_s": [round(r, 1) for r in rates[bucket]],
                    "cpu_us_per_request": [round(c, 1) for c in cpu[bucket]],
                }
                for bucket in BUCKETS
            },
            "evaluator_microseconds_uncached": round(evaluator_micros(document, "guarded", cached=False), 2),
            "evaluator_microseconds_repeated_request": round(evaluator_micros(document, "guarded"), 2),
            "load_average": os.getloadavg()[0],
        }
        result["meets_target"] = result["cpu_ratio_policy_vs_none"] <= 1.1
        print(json.dumps(result, indent=2))
        return 0
    finally:
        if cloud is not None:
            cloud.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
