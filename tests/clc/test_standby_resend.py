"""A launch the active CLC wrote but never sent to the CC when it died: the standby that takes over sends it, once.

The active CLC is held between writing a launch and sending it by PostgreSQL itself: the test locks the addresses
table, so the launch's reservation and instances are committed but the write of its public address that comes
next waits, before the CC call. The CLC is killed -9 there; the lock goes; the standby takes over, finds the launch
and sends it; the CC starts it exactly once. Without the re-send it would stay pending until the lost-instance
timeout."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

import asyncpg
import pytest

from tests.clc.compute_cloud import registered_image, wait_state
from tests.clc.ec2_helpers import ec2_url, sigv4
from tests.clc.second_clc import SecondClc
from tests.clc.test_standby import CLC, NC, ec2_at
from tests.harness import Cloud
from tests.waiting import wait_for


@pytest.fixture(scope="module")
def database(postgres) -> str:
    return postgres.create_database("resend")


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, database):
    extra = {
        "clc": {**CLC, "KOALA_DATABASE_URL": database, "KOALA_PUBLIC_IPS": "198.51.100.10-198.51.100.20"},
        "nc": NC,
    }
    instance = Cloud(tmp_path_factory.mktemp("resend") / "cloud", extra=extra)
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()


@contextlib.contextmanager
def table_locked(url: str, table: str) -> Iterator[None]:
    """`table` locked against writes (EXCLUSIVE mode) by a session of the test's, until the block ends."""
    locked, release = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    async def hold() -> None:
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                await conn.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
                locked.set()
                await asyncio.to_thread(release.wait)
        finally:
            await conn.close()

    def run() -> None:
        try:
            asyncio.run(hold())
        except BaseException as err:
            failure.append(err)
            locked.set()

    holder = threading.Thread(target=run, daemon=True)
    holder.start()
    locked.wait(30)
    if failure:
        raise failure[0]
    try:
        yield
    finally:
        release.set()
        holder.join(30)


def test_standby_sends_a_launch_the_dead_leader_wrote_but_never_sent(cloud, postgres, database, alice, tmp_path):
    image = registered_image(cloud, alice, tmp_path, "machine", "img.resend", "machine-resend")
    standby = SecondClc(cloud, "clc-b")
    standby.start_standing_by()
    name = database.rsplit("/", 1)[1]
    params = {
        "Action": "RunInstances",
        "Version": "2016-11-15",
        "ImageId": image,
        "MinCount": "1",
        "MaxCount": "1",
        "InstanceType": "m1.small",
        "ClientToken": "written-not-sent",
    }
    with table_locked(database, "addresses"):
        caller = threading.Thread(target=lambda: _call_quietly(ec2_url(cloud), params, alice), daemon=True)
        caller.start()
        written = wait_for(
            lambda: postgres.psql("SELECT instance_id FROM instances WHERE state = 'pending'", name),
            30,
            what="the launch written by the active CLC",
        )
        cloud.kill("clc")  # kill -9 inside the launch: written, never sent to the CC
    try:
        survivor = ec2_at(standby.url, alice)
        wait_for(lambda: _answers(survivor), 30, what="the standby to take over")
        described = wait_state(survivor, [written], {"running"}, timeout=90)
        assert described[written]["Placement"]["AvailabilityZone"]
        reply = sigv4(standby.url + "/services/Eucalyptus", params, alice)  # the client's retry: the same launch
        assert reply.status == 200 and written.encode() in reply.body
        live = [
            i["InstanceId"]
            for r in survivor.describe_instances()["Reservations"]
            for i in r["Instances"]
            if i["State"]["Name"] != "terminated"
        ]
        assert live == [written]  # started once, nothing else
        assert "sent again" in standby.log()
        assert "Traceback" not in standby.log(), standby.log()[-3000:]
    finally:
        standby.stop()


def _call_quietly(url: str, params: dict[str, str], creds) -> None:
    try:
        sigv4(url, params, creds)
    except OSError:  # the CLC is killed under the call
        pass


def _answers(ec2) -> bool:
    try:
        ec2.describe_regions()
    except Exception:
        return False
    return True
