"""Two CLCs on one PostgreSQL database (standby.py): one active, one standing by with 503 + Retry-After; kill -9
of the active one in the middle of 100 concurrent launches, and the standby takes over with every acknowledged
launch there exactly once, capacity accounting matching, and acknowledged changes kept."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from botocore.config import Config

from cli.allinone import cloud_is_fine
from common.messages.service import DescribeServiceResponse
from common.rpc import PeerStandingBy
from tests.clc.compute_cloud import registered_image, wait_state
from tests.clc.ec2_helpers import REGION, Creds, client, ec2_url, sigv4
from tests.clc.second_clc import SecondClc, health
from tests.harness import Cloud
from tests.waiting import wait_for

LAUNCHES = 100
KILL_AFTER = 20  # acknowledged launches before the active CLC is killed
CLC = {"KOALA_CC_POLL_SECONDS": 1}
NC = {"MAX_CORES": 128, "MAX_MEM": 65536, "MAX_DISK": 1000}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, postgres):
    url = postgres.create_database("standby")
    instance = Cloud(
        tmp_path_factory.mktemp("standby") / "cloud", extra={"clc": {**CLC, "KOALA_DATABASE_URL": url}, "nc": NC}
    )
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="module")
def standby(cloud):
    second = SecondClc(cloud, "clc-b")
    try:
        second.start_standing_by()
        yield second
    finally:
        second.stop()


@pytest.fixture(scope="module")
def image(cloud, alice, tmp_path_factory):
    return registered_image(cloud, alice, tmp_path_factory.mktemp("bundle"), "machine", "img.ha", "machine-ha")


def ec2_at(url: str, creds: Creds):
    return boto3.client(
        "ec2",
        endpoint_url=url + "/services/Eucalyptus",
        region_name=REGION,
        aws_access_key_id=creds.access_key,
        aws_secret_access_key=creds.secret_key,
        config=Config(retries={"max_attempts": 1}),
    )


def test_standby_answers_503_with_retry_after(cloud, standby, alice):
    request = urllib.request.Request(
        standby.url + "/services/Eucalyptus", data=b"Action=DescribeRegions", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 503 and int(caught.value.headers["Retry-After"]) > 0
    assert b"<Code>Unavailable</Code>" in caught.value.read()
    assert health(cloud.url("clc")) == 200
    assert client(cloud, alice).describe_regions()["Regions"]  # the active one answers


def test_koala_status_reports_the_standby_as_standing_by(cloud, standby):
    """Internal calls to a standby get PeerStandingBy (not a bad identity), which `koala status` counts as fine
    while another CLC is active, and not when none is."""

    async def describe(url: str) -> DescribeServiceResponse:
        client = cloud.admin_client()
        try:
            return await client.call(url, "DescribeService", None, DescribeServiceResponse)
        finally:
            await client.close()

    with pytest.raises(PeerStandingBy) as caught:
        asyncio.run(describe(standby.url))
    assert caught.value.status == 503 and int(caught.value.retry_after) > 0
    answers = asyncio.run(cloud.aio.describe_all())
    assert cloud_is_fine(answers) and isinstance(answers["clc"], DescribeServiceResponse)
    assert cloud_is_fine({**answers, "clc2": caught.value})
    assert not cloud_is_fine({**answers, "clc": caught.value})  # no CLC active
    assert not cloud_is_fine({**answers, "clc2": "PeerNotReached: connection refused"})


def test_kill_active_clc_during_100_concurrent_launches(cloud, standby, alice, image):
    ec2 = client(cloud, alice)
    ec2.create_key_pair(KeyName="acknowledged-before")
    free_before = _free_small(ec2)
    urls = [ec2_url(cloud), standby.url + "/services/Eucalyptus"]
    acknowledged: dict[str, tuple[str, str]] = {}  # client token -> (reservation id, instance id)
    before_kill: set[str] = set()
    guard = threading.Lock()

    def launch(token: str) -> None:
        params = {
            "Action": "RunInstances",
            "Version": "2016-11-15",
            "ImageId": image,
            "MinCount": "1",
            "MaxCount": "1",
            "InstanceType": "m1.small",
            "ClientToken": token,
        }
        deadline, target = time.monotonic() + 120, 0
        while True:
            assert time.monotonic() < deadline, f"launch {token} never acknowledged"
            try:
                reply = sigv4(urls[target], params, alice)
            except OSError:  # the active CLC died under us: the same request (same token) to the other
                target = 1
                time.sleep(0.1)
                continue
            if reply.status == 503:  # the standby, not active yet: Retry-After
                target = 1
                time.sleep(0.2)
                continue
            assert reply.status == 200, reply.body[-500:]
            ns = {"e": reply.xml.tag.split("}")[0][1:]}
            reservation = reply.xml.findtext("e:reservationId", namespaces=ns)
            instance = reply.xml.findtext("e:instancesSet/e:item/e:instanceId", namespaces=ns)
            with guard:
                acknowledged[token] = (reservation, instance)
                if len(acknowledged) == KILL_AFTER and "clc" in cloud.processes:
                    before_kill.update(acknowledged)
                    cloud.kill("clc")  # kill -9 of the active CLC, launches in flight
            return

    with ThreadPoolExecutor(LAUNCHES) as pool:
        for future in [pool.submit(launch, f"ha-launch-{i:03d}") for i in range(LAUNCHES)]:
            future.result()

    assert "clc" not in cloud.processes and len(before_kill) == KILL_AFTER  # the kill happened mid-way
    assert len(acknowledged) == LAUNCHES
    assert len({r for r, _ in acknowledged.values()}) == LAUNCHES  # one reservation per client token
    survivor = ec2_at(standby.url, alice)
    live = [
        i
        for r in survivor.describe_instances()["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] != "terminated"
    ]
    ids = [i["InstanceId"] for i in live]
    assert len(ids) == len(set(ids)) == LAUNCHES  # nothing admitted twice
    assert set(ids) == {i for _, i in acknowledged.values()}  # every acknowledged launch, and nothing else
    # What the killed CLC acknowledged had been sent to the CC: it runs. A launch it had written but not sent when
    # it died is answered to the client's retry with the same reservation (not a second one), and the survivor sent
    # it when it took over (test_standby_resend.py): every launch runs.
    wait_state(survivor, [instance for _, instance in acknowledged.values()], {"running"}, timeout=120)

    def accounting_matches() -> bool:  # the zone's free capacity is what the running instances leave
        running = sum(
            i["State"]["Name"] == "running"
            for r in survivor.describe_instances()["Reservations"]
            for i in r["Instances"]
        )
        return running >= len(before_kill) and _free_small(survivor) == free_before - running

    wait_for(accounting_matches, 60, what="capacity accounting to match the running instances")
    assert survivor.describe_key_pairs(KeyNames=["acknowledged-before"])["KeyPairs"]
    assert "active: this CLC serves the cloud" in standby.log()
    assert "Traceback" not in standby.log(), standby.log()[-3000:]


def _free_small(ec2) -> int:
    for row in ec2.describe_availability_zones(ZoneNames=["verbose"])["AvailabilityZones"]:
        if row["ZoneName"] == "|- m1.small":
            return int(row["State"].split()[0])
    raise AssertionError("no m1.small row")
