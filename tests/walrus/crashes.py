"""The common part of the kill -9 tests: clients busy in threads, Walrus killed once they did enough."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from tests.waiting import wait_for
from tests.walrus.conftest import Walrus

WORKERS = 6
# One request (or a few) of a worker: (its boto3 S3 client, the worker's number, the step's number from 1).
Step = Callable[[Any, int, int], None]


def kill_while_busy(walrus: Walrus, step: Step, enough: Callable[[], bool], what: str, interval: float = 0.05) -> None:
    """WORKERS threads each run `step` again and again with a client of its own (until stopped, or until a request
    fails: Walrus is gone); once `enough()` holds, Walrus is killed -9 while they are at it, then they are stopped
    and waited for. AssertionError naming `what` when they did not do enough within a minute (Walrus is killed and
    the threads stopped all the same)."""
    stop = threading.Event()

    def work(worker: int) -> None:
        client = walrus.client(connect_timeout=5, read_timeout=30)
        number = 0
        while not stop.is_set():
            number += 1
            try:
                step(client, worker, number)
            except (BotoCoreError, ClientError):
                return

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(WORKERS)]
    for thread in threads:
        thread.start()
    try:
        wait_for(enough, 60, interval, what)
    finally:
        walrus.cloud.kill("walrus")  # SIGKILL while requests are in flight
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
