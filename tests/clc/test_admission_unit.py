"""Admission control on its own: free capacity, tokens, expiry, zone choice, quotas, VM type rules."""

from __future__ import annotations

import asyncio

import pytest

from common.messages.clc_cc import DescribeResourcesResponse, ResourceAvailability
from services.cloud_controller.compute import vmtypes
from services.cloud_controller.compute.admission import Admission, count_quota
from services.cloud_controller.compute.errors import ComputeError
from services.cloud_controller.compute.vmtypes import DEFAULTS, VmTypes
from services.cloud_controller.database import open_clc_database

SMALL, MEDIUM, LARGE, XLARGE, CXLARGE = DEFAULTS


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def report(zone: str, **available: int) -> DescribeResourcesResponse:
    return DescribeResourcesResponse(
        zone=zone,
        resources=[
            ResourceAvailability(vm_type=name.replace("_", "."), available=n, max=n) for name, n in available.items()
        ],
    )


def test_free_is_reported_minus_reservations_and_never_overcommits() -> None:
    clock = Clock()
    admission = Admission(clock=clock)
    admission.update(report("z1", m1_small=8, m1_large=2), sent_at=clock())
    tokens = []
    for _ in range(20):  # 20 requests for 1..1 small instance: exactly 8 succeed
        try:
            tokens.append(admission.reserve("acct", SMALL, 1, 1))
        except ComputeError as err:
            assert err.code == "InsufficientInstanceCapacity"
    assert len(tokens) == 8
    assert admission.free("z1", SMALL) == 0
    # Eight smalls hold 8 cores, 1 GiB, 16 GB: in m1.large units that is at least 4, so none fit.
    assert admission.free("z1", LARGE) == 0


def test_min_and_max_count() -> None:
    clock = Clock()
    admission = Admission(clock=clock)
    admission.update(report("z1", m1_small=5), sent_at=clock())
    token = admission.reserve("a", SMALL, 2, 10)
    assert token.count == 5
    admission.release(token)
    with pytest.raises(ComputeError) as err:
        admission.reserve("a", SMALL, 6, 10)
    assert err.value.code == "InsufficientInstanceCapacity"
    assert admission.free("z1", SMALL) == 5  # the failed attempt took nothing


def test_submitted_token_is_redeemed_only_by_a_later_report() -> None:
    clock = Clock()
    admission = Admission(clock=clock)
    admission.update(report("z1", m1_small=4), sent_at=clock())
    token = admission.reserve("a", SMALL, 3, 3)
    clock.now += 1
    admission.submitted(token)
    # A report whose request went out before the CC accepted the launch does not count it yet.
    admission.update(report("z1", m1_small=4), sent_at=clock() - 0.5)
    assert admission.free("z1", SMALL) == 1
    clock.now += 1
    admission.update(report("z1", m1_small=1), sent_at=clock())
    assert admission.tokens == {}
    assert admission.free("z1", SMALL) == 1


def test_unconfirmed_reservation_expires() -> None:
    clock = Clock()
    admission = Admission(timeout=60, clock=clock)
    admission.update(report("z1", m1_small=2), sent_at=clock())
    admission.reserve("a", SMALL, 2, 2)
    assert admission.free("z1", SMALL) == 0
    clock.now += 61
    assert len(admission.expire()) == 1
    assert admission.free("z1", SMALL) == 2


def test_zone_choice_named_or_most_free() -> None:
    clock = Clock()
    admission = Admission(clock=clock)
    admission.update(report("z1", m1_small=2), sent_at=clock())
    admission.update(report("z2", m1_small=5), sent_at=clock())
    assert admission.reserve("a", SMALL, 1, 1).zone == "z2"
    assert admission.reserve("a", SMALL, 1, 1, zone="z1").zone == "z1"
    with pytest.raises(ComputeError) as err:
        admission.reserve("a", SMALL, 1, 1, zone="nowhere")
    assert err.value.code == "InvalidZone.NotFound"
    admission.unreachable("z2")
    assert admission.free("z2", SMALL) == 0
    assert admission.reserve("a", SMALL, 1, 1).zone == "z1"


def test_late_report_does_not_replace_newer_one() -> None:
    clock = Clock()
    admission = Admission(clock=clock)
    admission.update(report("z1", m1_small=3), sent_at=10.0)
    admission.update(report("z1", m1_small=9), sent_at=5.0)
    assert admission.free("z1", SMALL) == 3


def test_quota() -> None:
    count_quota(3, 2, 5, "instances")
    count_quota(100, 100, 0, "instances")  # unlimited
    with pytest.raises(ComputeError) as err:
        count_quota(4, 2, 5, "instances")
    assert err.value.code == "InstanceLimitExceeded"
    with pytest.raises(ComputeError) as err:
        count_quota(1, 1, 1, "addresses")
    assert err.value.code == "AddressLimitExceeded"


def test_vm_type_rules(tmp_path) -> None:
    async def scenario() -> None:
        db = await open_clc_database(tmp_path)
        types = VmTypes(db)
        await types.load()
        assert [t.name for t in types.list()] == ["m1.small", "c1.medium", "m1.large", "m1.xlarge", "c1.xlarge"]
        await types.set("m1.large", 2, 768, 10)
        with pytest.raises(ComputeError, match="component-wise ordered"):
            await types.set("m1.large", 2, 2048 + 1, 10)  # more memory than c1.xlarge, fewer cores
        with pytest.raises(ComputeError):
            await types.set("bad name", 1, 1, 1)
        with pytest.raises(ComputeError):
            await types.set("m1.tiny", 0, 64, 1)
        with pytest.raises(ComputeError):
            await types.delete(vmtypes.DEFAULT_TYPE)
        await types.set("m1.tiny", 1, 64, 1)
        again = VmTypes(db)
        await again.load()
        assert again.list()[0].name == "m1.tiny"
        assert again.get("m1.large").memory_mb == 768
        await db.close()

    asyncio.run(scenario())


def test_network_resources_allocate_and_give_back(tmp_path) -> None:
    from services.cloud_controller.compute.networks import Networks

    async def scenario() -> None:
        db = await open_clc_database(tmp_path)
        networks = Networks(db, vlan_min=10, vlan_max=11, addrs_per_net=8)
        a, new = networks.vlan_for(Networks.name("111", "default"))
        assert (a, new) == (10, True)
        assert networks.vlan_for(Networks.name("111", "default")) == (10, False)
        assert networks.vlan_for(Networks.name("222", "default"))[0] == 11
        with pytest.raises(ComputeError) as err:
            networks.vlan_for(Networks.name("333", "web"))  # the pool is 10..11
        assert err.value.code == "InsufficientInstanceCapacity"
        taken = [networks.take_index(a) for _ in range(5)]  # hosts 2..6 of an 8-address network
        assert taken == [2, 3, 4, 5, 6]
        with pytest.raises(ComputeError):
            networks.take_index(a)
        networks.give_back(a, 4)
        assert networks.take_index(a) == 4
        await networks.save_vlan(Networks.name("111", "default"))
        again = Networks(db)
        await again.load()
        assert again.vlans == {"111-default": 10}
        await db.close()

    asyncio.run(scenario())


def test_group_rules_become_network_rules() -> None:
    from services.cloud_controller.compute.netsync import translate
    from services.cloud_controller.compute.security_groups import Rule

    rules = translate(
        [
            Rule("tcp", 22, 22, cidr="0.0.0.0/0"),
            Rule("-1", -1, -1, source_group_id="sg-1", source_owner_id="222", source_group_name="web"),
            Rule("icmp", 8, -1, cidr="10.0.0.0/8"),
            Rule("47", -1, -1, cidr="10.0.0.0/8"),  # GRE: the CC cannot filter it, so it is left out
        ]
    )
    assert [(r.protocol, r.from_port, r.to_port, r.cidrs, r.source_networks) for r in rules] == [
        ("tcp", 22, 22, ["0.0.0.0/0"], []),
        ("all", -1, -1, [], ["222-web"]),
        ("icmp", 8, -1, ["10.0.0.0/8"], []),
    ]


def test_launch_rolls_back_when_no_vlan_is_left(tmp_path) -> None:
    """Capacity is reserved first, then addresses, then the network: when no VLAN is left everything taken is given
    back, before any CC is called (this engine's CC address leads nowhere). Launch-time addresses are "if any": a
    pool too small for the launch is no refusal."""
    import time
    from types import SimpleNamespace

    from services.cloud_controller.compute.cc_client import ClusterClient
    from services.cloud_controller.compute.engine import Compute, Settings
    from services.cloud_controller.compute.launch import RunRequest
    from services.cloud_controller.compute.store import Image

    async def scenario() -> None:
        db = await open_clc_database(tmp_path)
        compute = Compute(
            db, ClusterClient(None, {"z1": "http://127.0.0.1:9"}), Settings(network_resources="on"), ["192.0.2.1"]
        )  # type: ignore[arg-type]
        await compute.load()
        compute.zone_modes["z1"] = "MANAGED"
        await compute.store.save_image(
            Image("emi-0000000a", "111", "machine", "m", "b/m.manifest.xml", time.time()), new=True
        )
        compute.admission.update(report("z1", m1_small=5), sent_at=compute.admission.clock())
        principal = SimpleNamespace(account_id="111", user_id="u", is_admin=False)
        undo: list = []
        # One address for two instances: one goes without.
        assert len(compute.launcher.take_addresses("111", 2, undo)) == 1
        undo[0]()
        assert compute.addresses.free_count() == 1
        # Addresses enough, but no VLAN left for the network: the addresses go back too.
        compute.addresses.set_pool(["192.0.2.1", "192.0.2.2", "192.0.2.3"])
        compute.networks.vlan_min = compute.networks.vlan_max = 10
        compute.networks.vlans["999-other"] = 10
        with pytest.raises(ComputeError) as err:
            request = RunRequest(image_id="emi-0000000a", min_count=2, max_count=2)
            await compute.launcher.run_instances(principal, request)
        assert err.value.code == "InsufficientInstanceCapacity" and "VLAN" in err.value.message
        assert compute.addresses.free_count() == 3 and compute.admission.tokens == {}
        assert compute.networks.vlans == {"999-other": 10}
        await db.close()

    asyncio.run(scenario())
