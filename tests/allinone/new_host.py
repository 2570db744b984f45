"""A "host" of a test's own: a fresh network namespace that the calling thread (and so every command it starts)
works in, so a `koala up` test changes nothing of the shared machine's network but the namespace it made."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import threading
from collections.abc import Iterator

from cli.cloud_network import enter_namespace


@contextlib.contextmanager
def inside_new_host() -> Iterator[str]:
    """A fresh network namespace (loopback up) that this thread, and so every command it starts, works in."""
    name = f"kuh{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    own = os.open(f"/proc/{os.getpid()}/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    try:
        enter_namespace(f"/run/netns/{name}")
        try:
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
            yield name
        finally:
            enter_namespace(f"/proc/self/fd/{own}")
    finally:
        os.close(own)
        subprocess.run(["ip", "netns", "del", name], check=False)
