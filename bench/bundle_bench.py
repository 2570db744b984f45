"""Bundle and decrypt throughput against the shell pipeline, and cached-image serving against raw sendfile.

In one run, on the same files:
- bundle: `common.bundle.pipeline.bundle_image` (tar, parallel gzip members, AES-128-CBC, parts, SHA-1s) vs
  `tar -c | gzip | openssl enc -aes-128-cbc` writing one file;
- decrypt: `decrypt_bundle` (parts in order, SHA-1 of each, AES, gunzip, tar-stream SHA-1, untar, image SHA-256)
  vs `cat parts | openssl enc -d -aes-128-cbc | gunzip | tar -x`;
  each for a 256 MiB compressible (text) image and a 256 MiB random image;
- serving: a real Walrus process answering GetDecryptedImage (signed, from its image cache) vs a minimal server
  that only does os.sendfile of the same file, both read by the same raw-socket client (server and client pinned
  to different cores).
Prints JSON. `--mib` changes the image size.

    .venv/bin/python bench/bundle_bench.py [--mib 256] [--repeat 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.allinone import NODE_ID, AllInOne
from common import pki, signing
from common.bundle import keys
from common.bundle import manifest as mf
from common.bundle.pipeline import DirectoryParts, bundle_image, decrypt_bundle
from common.config import parse_conf
from common.messages.walrus_images import GET_DECRYPTED_IMAGE_PATH, GetDecryptedImageRequest
from common.rpc import RpcClient
from common.signing import Identity, TrustStore

MIB = 1 << 20


def make_images(root: Path, mib: int) -> dict[str, Path]:
    rng = random.Random(4)
    vocabulary = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(3000)
    ]
    blocks = []
    for _ in range(8):  # 8 different MiB of "log text", cycled: compresses like real text (~3-4x)
        text = bytearray()
        while len(text) < MIB:
            line = f"{rng.randint(0, 10**6):07d} " + " ".join(rng.choices(vocabulary, k=rng.randint(4, 14))) + "\n"
            text += line.encode()
        blocks.append(bytes(text[:MIB]))
    text_path, random_path = root / "text.img", root / "random.img"
    with text_path.open("wb") as out:
        for i in range(mib):
            out.write(blocks[i % len(blocks)])
    with random_path.open("wb") as out:
        for _ in range(mib):
            out.write(os.urandom(MIB))
    return {"compressible": text_path, "random": random_path}


def _cpu() -> float:
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def timed(action) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and the children it waited for)."""
    start, cpu = time.perf_counter(), _cpu()
    action()
    return time.perf_counter() - start, _cpu() - cpu


def drop(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def bench_pipelines(root: Path, images: dict[str, Path], creds: dict, repeat: int) -> dict:
    results = {}
    for label, image in images.items():
        size = image.stat().st_size
        ours_bundle, shell_bundle, ours_decrypt, shell_decrypt = [], [], [], []
        for _ in range(repeat):
            dest = root / f"b-{label}"
            drop(dest)
            ours_bundle.append(
                timed(
                    lambda dest=dest, image=image: bundle_image(
                        image,
                        dest,
                        user_key=creds["user_key"],
                        user_cert=creds["user_cert"],
                        cloud_cert=creds["cloud_cert"],
                        account="123456789012",
                    )
                )
            )
            key, iv = os.urandom(16).hex(), os.urandom(16).hex()
            shell_out = root / f"shell-{label}.enc"
            script = (
                f"tar -c -C {image.parent} {image.name} | gzip | "
                f"openssl enc -aes-128-cbc -K {key} -iv {iv} > {shell_out}"
            )
            shell_bundle.append(timed(lambda script=script: subprocess.run(["sh", "-c", script], check=True)))
            # Decrypt our bundle both ways.
            manifest_path = dest / f"{image.name}.manifest.xml"
            manifest = mf.parse(manifest_path.read_bytes())
            out_path = root / f"out-{label}.img"

            def ours(manifest=manifest, dest=dest, out_path=out_path) -> None:
                with out_path.open("wb") as out:
                    decrypt_bundle(manifest, creds["cloud_key"], DirectoryParts(dest), out)

            ours_decrypt.append(timed(ours))
            out_path.unlink()
            aes_key = keys.unwrap(manifest.ec2_encrypted_key, creds["cloud_key"], "key").hex()
            aes_iv = keys.unwrap(manifest.ec2_encrypted_iv, creds["cloud_key"], "iv").hex()
            parts = " ".join(str(dest / p.filename) for p in manifest.parts)
            extract = root / f"x-{label}"
            drop(extract)
            extract.mkdir()
            script = (
                f"cat {parts} | openssl enc -d -aes-128-cbc -K {aes_key} -iv {aes_iv} | gunzip | tar -x -C {extract}"
            )
            shell_decrypt.append(timed(lambda script=script: subprocess.run(["sh", "-c", script], check=True)))
            drop(extract)
            shell_out.unlink()
        bundled = sum((root / f"b-{label}" / p.filename).stat().st_size for p in manifest.parts)
        best = {
            k: min(v)
            for k, v in (("ob", ours_bundle), ("sb", shell_bundle), ("od", ours_decrypt), ("sd", shell_decrypt))
        }
        results[label] = {
            "image_mib": size / MIB,
            "bundled_mib": round(bundled / MIB, 1),
            "bundle": _compare(size, best["ob"], best["sb"]),
            "decrypt": _compare(size, best["od"], best["sd"]),
        }
    return results


def _compare(size: int, ours: tuple[float, float], shell: tuple[float, float]) -> dict:
    """Throughput by wall time (the target) and CPU seconds used (robust when other work shares the cores)."""
    return {
        "koala_mib_s": round(size / MIB / ours[0], 1),
        "shell_mib_s": round(size / MIB / shell[0], 1),
        "ratio": round(shell[0] / ours[0], 2),
        "koala_cpu_s": round(ours[1], 2),
        "shell_cpu_s": round(shell[1], 2),
    }


SENDFILE_SERVER = r"""
import os, socket, sys
os.sched_setaffinity(0, {int(sys.argv[3])})
path, port = sys.argv[1], int(sys.argv[2])
size = os.path.getsize(path)
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port)); server.listen(8)
while True:
    conn, _ = server.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(65536)
        if not more:
            break
        data += more
    if b"\r\n\r\n" not in data:
        conn.close()
        continue
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
    with open(path, "rb") as f:
        offset = 0
        while offset < size:
            offset += os.sendfile(conn.fileno(), f.fileno(), offset, size - offset)
    conn.close()
"""


def fetch(port: int, request: bytes) -> tuple[int, float, float]:
    """Send a raw HTTP request, read the whole body into one reused buffer; (status, seconds, to first byte)."""
    buffer = bytearray(4 * MIB)
    view = memoryview(buffer)
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(65536)
        first = time.perf_counter() - start
        header, _, body = head.partition(b"\r\n\r\n")
        status = int(header.split()[1])
        length = next(
            int(line.split(b":")[1]) for line in header.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        got = len(body)
        while got < length:
            n = conn.recv_into(view)
            if not n:
                break
            got += n
    return status, time.perf_counter() - start, first


def bench_serving(root: Path, image: Path, repeat: int) -> dict:
    """A real Walrus serving the image from its cache vs bare sendfile."""
    from services.walrus.images.cache import Entry, entry_id

    size = image.stat().st_size
    aio = AllInOne(root / "cloud")
    ports = {role: _free_port() for role in ("clc", "walrus", "cc", "nc")}
    aio.prepare(ports=ports)
    settings = parse_conf(aio.conf_path("walrus").read_text())
    cache_dir = Path(settings["KOALA_STATE_DIR"].value) / "image-cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    ident = entry_id("bench", "bench/image.manifest.xml")
    shutil.copyfile(image, cache_dir / f"{ident}.img")
    now = time.time()
    entry = Entry(
        ident, "bench", "bench/image.manifest.xml", ["bench/image.part.0"], "0" * 64, size, "0" * 64, now, now
    )
    (cache_dir / f"{ident}.json").write_text(json.dumps(asdict(entry)))
    server_core = 1 % (os.cpu_count() or 1)
    os.sched_setaffinity(0, {0})
    walrus = aio.start("walrus", preexec_fn=lambda: os.sched_setaffinity(0, {server_core}))
    baseline_port = _free_port()
    baseline = subprocess.Popen(
        [sys.executable, "-c", SENDFILE_SERVER, str(image), str(baseline_port), str(server_core)]
    )
    try:
        aio.wait_healthy({"walrus": walrus})
        directory = pki.PkiDir(aio.dir / "pki")
        identity = Identity.from_files(directory.cert_path(NODE_ID), directory.key_path(NODE_ID))
        client = RpcClient(identity, TrustStore(pki.load_cert(directory.ca_path)))
        url = aio.endpoints()["walrus"].url
        peer = asyncio.run(_peer(client, url))
        _wait_port(baseline_port)
        walrus_times, raw_times, walrus_first = [], [], []
        for _ in range(max(repeat, 8)):
            body = GetDecryptedImageRequest(bucket="bench", manifest_key="bench/image.manifest.xml").model_dump_json()
            headers = identity.sign_headers("POST", GET_DECRYPTED_IMAGE_PATH, peer, body.encode())
            headers[signing.HEADER_CERT_PEM] = identity.cert_der_b64
            lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            request = (
                f"POST {GET_DECRYPTED_IMAGE_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n{lines}\r\n{body}"
            ).encode()
            status, seconds, first = fetch(ports["walrus"], request)
            if status != 200:
                raise SystemExit(f"Walrus answered {status}: see {aio.log_path('walrus')}")
            walrus_times.append(seconds)
            walrus_first.append(first)
            raw_times.append(fetch(baseline_port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")[1])
    finally:
        baseline.kill()
        aio.stop("walrus")
    walrus_rate, raw_rate = size / MIB / min(walrus_times), size / MIB / min(raw_times)
    return {
        "image_mib": size / MIB,
        "walrus_get_decrypted_image_mib_s": round(walrus_rate, 1),
        "raw_sendfile_mib_s": round(raw_rate, 1),
        "ratio": round(walrus_rate / raw_rate, 2),
        "walrus_request_ms": round(1000 * min(walrus_first), 2),  # signed request to the first byte
    }


async def _peer(client: RpcClient, url: str) -> str:
    try:
        return (await client.peer(url, expect_role="walrus")).id
    finally:
        await client.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_port(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return
        except OSError:
            time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--only", choices=["pipelines", "serving"], help="run one half of the benchmark")
    args = parser.parse_args()
    data = Path(__file__).resolve().parent.parent / "tests" / "data" / "bundles" / "keys"
    creds = {
        "user_key": keys.load_private_key(data / "user-pk.pem"),
        "user_cert": keys.load_certificate(data / "user-cert.pem"),
        "cloud_key": keys.load_private_key(data / "cloud-pk.pem"),
        "cloud_cert": keys.load_certificate(data / "cloud-cert.pem"),
    }
    with tempfile.TemporaryDirectory(prefix="bundle-bench-") as tmp:
        root = Path(tmp)
        images = make_images(root, args.mib)
        report: dict = {"cpus": os.cpu_count(), "load_average": os.getloadavg()}
        if args.only != "serving":
            report["pipelines"] = bench_pipelines(root, images, creds, args.repeat)
        if args.only != "pipelines":
            report["serving"] = bench_serving(root, images["random"], args.repeat)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
