"""Run in a namespace (as root): ICMP echo to HOST every INTERVAL seconds until SIGTERM/SIGINT, then print JSON:
sent, received, and `max_gap_ms`, the longest time between two replies (the guest's downtime as the network saw
it, give or take the interval). A raw socket, so no ping binary is needed."""

from __future__ import annotations

import itertools
import json
import os
import select
import signal
import socket
import struct
import sys
import time


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def main(host: str, interval: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident, seq, sent = os.getpid() & 0xFFFF, 0, 0
    replies: list[float] = []
    stop = False

    def finish(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, finish)
    signal.signal(signal.SIGINT, finish)
    print("ready", flush=True)
    next_send = time.monotonic()
    while not stop:
        now = time.monotonic()
        if now >= next_send:
            seq = (seq + 1) & 0xFFFF
            header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            payload = struct.pack("!d", now)
            packet = struct.pack("!BBHHH", 8, 0, checksum(header + payload), ident, seq) + payload
            try:
                sock.sendto(packet, (host, 0))
                sent += 1
            except OSError:
                pass
            next_send += interval
        try:
            ready, _, _ = select.select([sock], [], [], max(0.0, next_send - time.monotonic()))
        except InterruptedError:
            continue
        if ready:
            data, _ = sock.recvfrom(2048)
            offset = (data[0] & 0x0F) * 4
            kind, _code, _sum, their_id, _seq = struct.unpack("!BBHHH", data[offset : offset + 8])
            if kind == 0 and their_id == ident:
                replies.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(replies)]
    print(json.dumps({"sent": sent, "received": len(replies), "max_gap_ms": round(max(gaps, default=0) * 1000, 1)}))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0.01)
