"""The bursting policy on its own: local zones first, whatever their free room; a remote zone only for the
accounts or VM types the admin allowed, and only when no local zone has room."""

from __future__ import annotations

import pytest

from common.messages.clc_cc import DescribeResourcesResponse, ResourceAvailability
from services.cloud_controller.compute import bursting
from services.cloud_controller.compute.admission import Admission
from services.cloud_controller.compute.bursting import BurstPolicy
from services.cloud_controller.compute.errors import ComputeError
from services.cloud_controller.compute.vmtypes import DEFAULTS

SMALL, MEDIUM = DEFAULTS[0], DEFAULTS[1]


def report(zone: str, small: int, remote: bool = False) -> DescribeResourcesResponse:
    return DescribeResourcesResponse(
        zone=zone,
        resources=[ResourceAvailability(vm_type=vm.name, available=small, max=small) for vm in (SMALL, MEDIUM)],
        remote=remote,
    )


def admission(local_free: int, remote_free: int = 10) -> Admission:
    result = Admission()
    result.update(report("zone1", local_free), sent_at=result.clock())
    result.update(report("burst", remote_free, remote=True), sent_at=result.clock())
    return result


def test_local_zones_come_first_even_when_the_remote_has_more_room() -> None:
    token = bursting.reserve(admission(1), BurstPolicy.parse("*", "*"), "acct", SMALL, 1, 1)
    assert token.zone == "zone1"


@pytest.mark.parametrize(
    ("accounts", "vm_types", "bursts"),
    [
        ("acct", "", True),
        ("other 1234", "", False),
        ("", "m1.small", True),
        ("", "c1.medium", False),
        ("*", "", True),
        ("", "*", True),
        ("", "", False),
    ],
)
def test_a_full_local_cloud_bursts_only_where_the_admin_allowed(accounts: str, vm_types: str, bursts: bool) -> None:
    policy = BurstPolicy.parse(accounts, vm_types)
    if bursts:
        token = bursting.reserve(admission(0), policy, "acct", SMALL, 1, 1)
        assert token.zone == "burst"
    else:
        with pytest.raises(ComputeError) as refused:
            bursting.reserve(admission(0), policy, "acct", SMALL, 1, 1)
        assert refused.value.code == "InsufficientInstanceCapacity" and "zone1" in refused.value.message


def test_a_full_remote_zone_gives_the_local_refusal() -> None:
    with pytest.raises(ComputeError) as refused:
        bursting.reserve(admission(0, remote_free=0), BurstPolicy.parse("*", ""), "acct", SMALL, 1, 1)
    assert "zone1" in refused.value.message


def test_a_cloud_with_only_a_remote_zone_bursts_when_allowed() -> None:
    only_remote = Admission()
    only_remote.update(report("burst", 3, remote=True), sent_at=only_remote.clock())
    assert bursting.reserve(only_remote, BurstPolicy.parse("*", ""), "acct", SMALL, 2, 5).count == 3
    with pytest.raises(ComputeError):
        bursting.reserve(only_remote, BurstPolicy(), "acct", SMALL, 1, 1)
