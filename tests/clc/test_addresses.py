"""Elastic addresses against real CLC, Walrus, CC and NC processes through boto3 and awscli: the pool, launch-time
public addresses, allocate/associate/disassociate/release, quotas and isolation."""

from __future__ import annotations

import ipaddress

import pytest
from botocore.exceptions import ClientError

from tests.clc.compute_cloud import (
    registered_image,
    run_when_room,
    start_cloud,
    wait_state,
)
from tests.clc.ec2_helpers import aws, client, code, new_account, stop_clean

POOL = "192.0.2.10-192.0.2.13 192.0.2.20"
CLC = {"KOALA_PUBLIC_IPS": POOL, "KOALA_QUOTA_ADDRESSES": 2, "KOALA_QUOTA_INSTANCES": 3}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, clc_database):
    instance = start_cloud(tmp_path_factory.mktemp("addresses") / "cloud", clc=CLC, database_url=clc_database)
    try:
        yield instance
    finally:
        stop_clean(instance)


@pytest.fixture(scope="module")
def image(cloud, alice, tmp_path_factory):
    return registered_image(cloud, alice, tmp_path_factory.mktemp("bundle"), "machine", "img.four", "machine-four")


@pytest.fixture(scope="module")
def instance_id(cloud, alice, image):
    ec2 = client(cloud, alice)
    launched = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    wait_state(ec2, [launched], {"running"})
    return launched


def public_ip(ec2, instance_id: str) -> str | None:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0].get("PublicIpAddress")


def test_launch_gives_a_pool_address(cloud, alice, instance_id):
    address = public_ip(client(cloud, alice), instance_id)
    assert address is not None and ipaddress.IPv4Address(address) in ipaddress.IPv4Network("192.0.2.0/24")
    # Launch-time addresses are not the account's elastic addresses.
    assert client(cloud, alice).describe_addresses()["Addresses"] == []


def test_allocate_associate_disassociate_release(cloud, alice, bob, instance_id):
    ec2 = client(cloud, alice)
    first = ec2.allocate_address(Domain="standard")
    second = ec2.allocate_address()
    assert first["PublicIp"] != second["PublicIp"] and first["AllocationId"].startswith("eipalloc-")
    with pytest.raises(ClientError) as err:
        ec2.allocate_address()  # quota: 2 per account
    assert code(err) == "AddressLimitExceeded"
    listed = {a["PublicIp"]: a for a in ec2.describe_addresses()["Addresses"]}
    assert set(listed) == {first["PublicIp"], second["PublicIp"]}
    assert all("InstanceId" not in a for a in listed.values())

    launch_address = public_ip(ec2, instance_id)
    association = ec2.associate_address(InstanceId=instance_id, PublicIp=first["PublicIp"])["AssociationId"]
    assert association.startswith("eipassoc-")
    assert public_ip(ec2, instance_id) == first["PublicIp"]
    bound = ec2.describe_addresses(PublicIps=[first["PublicIp"]])["Addresses"][0]
    assert bound["InstanceId"] == instance_id and bound["AssociationId"] == association
    by_filter = ec2.describe_addresses(Filters=[{"Name": "instance-id", "Values": [instance_id]}])["Addresses"]
    assert [a["PublicIp"] for a in by_filter] == [first["PublicIp"]]

    # Bob sees none of it and can touch none of it.
    bob_ec2 = client(cloud, bob)
    assert bob_ec2.describe_addresses()["Addresses"] == []
    with pytest.raises(ClientError) as err:
        bob_ec2.release_address(PublicIp=second["PublicIp"])
    assert code(err) == "AuthFailure"
    with pytest.raises(ClientError) as err:
        bob_ec2.disassociate_address(PublicIp=first["PublicIp"])
    assert code(err) == "AuthFailure"
    bobs = bob_ec2.allocate_address()["PublicIp"]
    with pytest.raises(ClientError) as err:
        bob_ec2.associate_address(InstanceId=instance_id, PublicIp=bobs)
    assert code(err) == "InvalidInstanceID.NotFound"
    bob_ec2.release_address(PublicIp=bobs)

    # Disassociating gives the instance a pool address back.
    ec2.disassociate_address(PublicIp=first["PublicIp"])
    after = public_ip(ec2, instance_id)
    assert after not in (None, first["PublicIp"], second["PublicIp"])
    assert "InstanceId" not in ec2.describe_addresses(PublicIps=[first["PublicIp"]])["Addresses"][0]
    assert launch_address  # the launch-time address went back to the pool when the elastic one came
    listed = aws(cloud, alice, "describe-addresses")
    assert {a["PublicIp"] for a in listed["Addresses"]} == {first["PublicIp"], second["PublicIp"]}
    ec2.release_address(PublicIp=first["PublicIp"])
    ec2.release_address(AllocationId=second["AllocationId"])
    assert ec2.describe_addresses()["Addresses"] == []


def test_address_errors(cloud, alice, instance_id):
    ec2 = client(cloud, alice)
    for call, expected in (
        (lambda: ec2.release_address(PublicIp="198.51.100.1"), "AuthFailure"),
        (lambda: ec2.release_address(AllocationId="eipalloc-00000000"), "InvalidAllocationID.NotFound"),
        (lambda: ec2.describe_addresses(PublicIps=["198.51.100.1"]), "InvalidAddress.NotFound"),
        (lambda: ec2.disassociate_address(AssociationId="eipassoc-00000000"), "InvalidAssociationID.NotFound"),
        (lambda: ec2.allocate_address(Domain="vpc"), "InvalidParameterValue"),
    ):
        with pytest.raises(ClientError) as err:
            call()
        assert code(err) == expected
    held = ec2.allocate_address()["PublicIp"]
    with pytest.raises(ClientError) as err:
        ec2.associate_address(InstanceId="i-00000000", PublicIp=held)
    assert code(err) == "InvalidInstanceID.NotFound"
    ec2.release_address(PublicIp=held)


def test_terminating_returns_launch_address_to_pool(cloud, alice, instance_id):
    ec2 = client(cloud, alice)
    address = public_ip(ec2, instance_id)
    ec2.terminate_instances(InstanceIds=[instance_id])
    wait_state(ec2, [instance_id], {"terminated"})
    # The whole pool (5 addresses, 2 per account) can be allocated again, the freed address among them.
    clients = [ec2, client(cloud, new_account(cloud, "carol")), client(cloud, new_account(cloud, "dave"))]
    held = [(c, c.allocate_address()["PublicIp"]) for c in clients for _ in range(2 if c is not clients[2] else 1)]
    assert {ip for _, ip in held} == {"192.0.2.10", "192.0.2.11", "192.0.2.12", "192.0.2.13", "192.0.2.20"}
    assert address in {ip for _, ip in held}
    with pytest.raises(ClientError) as err:
        clients[2].allocate_address()
    assert code(err) == "AddressLimitExceeded"  # the pool is empty
    for owner, ip in held:
        owner.release_address(PublicIp=ip)


def test_a_launch_with_the_pool_used_up_runs_without_a_public_address(cloud, alice, image, instance_id):
    """Launch-time public addresses are "if any": an empty pool is no reason to refuse the launch."""
    ec2 = client(cloud, alice)
    clients = [ec2, client(cloud, new_account(cloud, "erin")), client(cloud, new_account(cloud, "frank"))]
    held = [(c, c.allocate_address()["PublicIp"]) for c in clients for _ in range(2 if c is not clients[2] else 1)]
    try:
        launched = run_when_room(ec2, ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        wait_state(ec2, [launched], {"running"})
        assert public_ip(ec2, launched) is None
        ec2.terminate_instances(InstanceIds=[launched])
        wait_state(ec2, [launched], {"terminated"})
    finally:
        for owner, ip in held:
            owner.release_address(PublicIp=ip)


def test_instance_quota(cloud, alice, image, instance_id):
    """KOALA_QUOTA_INSTANCES=3 per account (the module's instance is terminated by now)."""
    ec2 = client(cloud, alice)
    with pytest.raises(ClientError) as err:
        ec2.run_instances(ImageId=image, MinCount=4, MaxCount=4)
    assert code(err) == "InstanceLimitExceeded"
    launched = run_when_room(ec2, ImageId=image, MinCount=1, MaxCount=5)["Instances"]
    assert len(launched) == 3  # trimmed to the quota
    ids = [i["InstanceId"] for i in launched]
    # Every launch-time address is distinct and from the pool.
    assert len({public_ip(ec2, i) for i in ids}) == 3
    with pytest.raises(ClientError) as err:
        ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)
    assert code(err) == "InstanceLimitExceeded"
    ec2.terminate_instances(InstanceIds=ids)
    wait_state(ec2, ids, {"terminated"})
