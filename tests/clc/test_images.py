"""Images against real CLC, Walrus, CC and NC processes: bundles made and uploaded with the project's tools,
registered through boto3 and awscli; types, defaults, visibility, launch permissions and attributes."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from tests.clc.compute_cloud import bundle_and_upload, start_cloud, wait_state, wait_zone_ready
from tests.clc.ec2_helpers import aws, client, code, stop_clean


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, clc_database):
    instance = start_cloud(tmp_path_factory.mktemp("images") / "cloud", database_url=clc_database)
    try:
        yield instance
    finally:
        stop_clean(instance)


@pytest.fixture(scope="module")
def bundles(cloud, tmp_path_factory):
    work = tmp_path_factory.mktemp("bundles")
    return {
        "kernel": bundle_and_upload(cloud, work, "vmlinuz-k", "img.one", "--kernel", "true"),
        "ramdisk": bundle_and_upload(cloud, work, "initrd-r", "img.one", "--ramdisk", "true"),
        "machine": bundle_and_upload(cloud, work, "machine", "img.one"),
    }


@pytest.fixture(scope="module")
def images(cloud, alice, bundles):
    ec2 = client(cloud, alice)
    kernel = ec2.register_image(ImageLocation=bundles["kernel"], Name="kernel-one")["ImageId"]
    ramdisk = ec2.register_image(ImageLocation=bundles["ramdisk"], Name="ramdisk-one")["ImageId"]
    machine = ec2.register_image(
        ImageLocation=bundles["machine"], Name="machine-one", KernelId=kernel, RamdiskId=ramdisk, Architecture="x86_64"
    )["ImageId"]
    return {"kernel": kernel, "ramdisk": ramdisk, "machine": machine}


def test_register_detects_kernel_ramdisk_and_machine(cloud, alice, images, bundles):
    assert images["kernel"].startswith("eki-")
    assert images["ramdisk"].startswith("eri-")
    assert images["machine"].startswith("emi-")
    found = {i["ImageId"]: i for i in client(cloud, alice).describe_images(Owners=["self"])["Images"]}
    assert found[images["kernel"]]["ImageType"] == "kernel"
    assert found[images["ramdisk"]]["ImageType"] == "ramdisk"
    machine = found[images["machine"]]
    assert machine["ImageType"] == "machine"
    assert machine["KernelId"] == images["kernel"] and machine["RamdiskId"] == images["ramdisk"]
    assert machine["ImageLocation"] == bundles["machine"]
    assert machine["State"] == "available" and machine["Public"] is False
    assert machine["RootDeviceType"] == "instance-store"


def test_register_errors(cloud, alice, bob, images, bundles):
    ec2 = client(cloud, alice)
    with pytest.raises(ClientError) as err:
        ec2.register_image(ImageLocation=bundles["machine"], Name="machine-one")  # the name is taken
    assert code(err) == "InvalidAMIName.Duplicate"
    with pytest.raises(ClientError) as err:
        ec2.register_image(ImageLocation="img.one/nothing-here.manifest.xml", Name="missing")
    assert code(err) == "InvalidManifest"
    with pytest.raises(ClientError) as err:
        ec2.register_image(ImageLocation="../../etc/passwd", Name="evil")
    assert code(err) == "InvalidParameterValue"
    # Bob does not own the bucket: he cannot register Alice's bundle.
    with pytest.raises(ClientError) as err:
        client(cloud, bob).register_image(ImageLocation=bundles["machine"], Name="stolen")
    assert code(err) == "AuthFailure"
    with pytest.raises(ClientError) as err:
        ec2.register_image(ImageLocation=bundles["machine"], Name="bad-kernel", KernelId=images["ramdisk"])
    assert code(err).startswith("InvalidKernelId")


def test_private_image_is_invisible_and_unlaunchable_for_others(cloud, alice, bob, images):
    wait_zone_ready(cloud, alice)
    bob_ec2 = client(cloud, bob)
    assert images["machine"] not in {i["ImageId"] for i in bob_ec2.describe_images()["Images"]}
    with pytest.raises(ClientError) as err:
        bob_ec2.describe_images(ImageIds=[images["machine"]])
    assert code(err) == "InvalidAMIID.NotFound"
    with pytest.raises(ClientError) as err:
        bob_ec2.run_instances(ImageId=images["machine"], MinCount=1, MaxCount=1)
    assert code(err) == "InvalidAMIID.NotFound"
    with pytest.raises(ClientError) as err:
        bob_ec2.modify_image_attribute(ImageId=images["machine"], LaunchPermission={"Add": [{"Group": "all"}]})
    assert code(err) == "InvalidAMIID.NotFound"


def test_launch_permission_for_one_account_then_all(cloud, alice, bob, images):
    ec2, bob_ec2 = client(cloud, alice), client(cloud, bob)
    ec2.modify_image_attribute(ImageId=images["machine"], LaunchPermission={"Add": [{"UserId": bob.account_id}]})
    # The image's kernel and ramdisk come with it: Bob needs no permission of his own for them ...
    attribute = ec2.describe_image_attribute(ImageId=images["machine"], Attribute="launchPermission")
    assert attribute["LaunchPermissions"] == [{"UserId": bob.account_id}]
    # Bob now sees it as executable by him, and can launch it; he still cannot change it.
    assert images["machine"] in {i["ImageId"] for i in bob_ec2.describe_images(ExecutableUsers=["self"])["Images"]}
    assert images["machine"] not in {i["ImageId"] for i in bob_ec2.describe_images(Owners=["self"])["Images"]}
    with pytest.raises(ClientError) as err:
        bob_ec2.describe_image_attribute(ImageId=images["machine"], Attribute="launchPermission")
    assert code(err) == "AuthFailure"
    launched = bob_ec2.run_instances(ImageId=images["machine"], MinCount=1, MaxCount=1)["Instances"][0]
    assert launched["KernelId"] == images["kernel"]
    # ... but naming Alice's private kernel himself is not allowed.
    with pytest.raises(ClientError) as err:
        bob_ec2.run_instances(ImageId=images["machine"], MinCount=1, MaxCount=1, KernelId=images["kernel"])
    assert code(err) == "InvalidAMIID.NotFound"
    wait_state(bob_ec2, [launched["InstanceId"]], {"running"})
    bob_ec2.terminate_instances(InstanceIds=[launched["InstanceId"]])
    # Removing the permission takes it away again; group all makes the image public.
    ec2.modify_image_attribute(ImageId=images["machine"], LaunchPermission={"Remove": [{"UserId": bob.account_id}]})
    with pytest.raises(ClientError) as err:
        bob_ec2.run_instances(ImageId=images["machine"], MinCount=1, MaxCount=1)
    assert code(err) == "InvalidAMIID.NotFound"
    ec2.modify_image_attribute(
        ImageId=images["machine"], Attribute="launchPermission", OperationType="add", UserGroups=["all"]
    )
    public = bob_ec2.describe_images(ExecutableUsers=["all"])["Images"]
    assert [i["Public"] for i in public if i["ImageId"] == images["machine"]] == [True]
    ec2.reset_image_attribute(ImageId=images["machine"], Attribute="launchPermission")
    assert client(cloud, alice).describe_images(ImageIds=[images["machine"]])["Images"][0]["Public"] is False
    assert images["machine"] not in {i["ImageId"] for i in bob_ec2.describe_images()["Images"]}


def test_description_kernel_and_ramdisk_attributes(cloud, alice, images):
    ec2 = client(cloud, alice)
    ec2.modify_image_attribute(ImageId=images["machine"], Description={"Value": "a test machine"})
    assert ec2.describe_image_attribute(ImageId=images["machine"], Attribute="description")["Description"] == {
        "Value": "a test machine"
    }
    kernel = ec2.describe_image_attribute(ImageId=images["machine"], Attribute="kernel")
    assert kernel["KernelId"] == {"Value": images["kernel"]}
    ec2.modify_image_attribute(ImageId=images["machine"], Attribute="ramdisk", Value="")
    assert "Value" not in ec2.describe_image_attribute(ImageId=images["machine"], Attribute="ramdisk")["RamdiskId"]
    ec2.modify_image_attribute(ImageId=images["machine"], Attribute="ramdisk", Value=images["ramdisk"])
    ramdisk = ec2.describe_image_attribute(ImageId=images["machine"], Attribute="ramdisk")["RamdiskId"]
    assert ramdisk == {"Value": images["ramdisk"]}
    with pytest.raises(ClientError) as err:
        ec2.modify_image_attribute(ImageId=images["machine"], Attribute="kernel", Value=images["ramdisk"])
    assert code(err).startswith("InvalidKernelId")


def test_describe_filters_and_awscli(cloud, alice, images):
    ec2 = client(cloud, alice)
    kernels = ec2.describe_images(Filters=[{"Name": "image-type", "Values": ["kernel"]}])["Images"]
    assert [i["ImageId"] for i in kernels] == [images["kernel"]]
    named = ec2.describe_images(Filters=[{"Name": "name", "Values": ["machine-*"]}])["Images"]
    assert [i["ImageId"] for i in named] == [images["machine"]]
    # The cloud admin's images are the "amazon"-like ones (alias eucalyptus).
    system = ec2.describe_images(Owners=["amazon"])["Images"]
    assert images["machine"] in {i["ImageId"] for i in system}
    assert {i.get("ImageOwnerAlias") for i in system} == {"eucalyptus"}
    assert ec2.describe_images(Owners=["123456789012"])["Images"] == []
    listed = aws(cloud, alice, "describe-images", "--owners", "self", "--image-ids", images["ramdisk"])
    assert [i["ImageType"] for i in listed["Images"]] == ["ramdisk"]
    with pytest.raises(ClientError) as err:
        ec2.describe_images(ImageIds=["emi-zzzz"])
    assert code(err) == "InvalidAMIID.Malformed"
    with pytest.raises(ClientError) as err:
        ec2.describe_images(Filters=[{"Name": "no-such-filter", "Values": ["x"]}])
    assert code(err) == "InvalidParameterValue"


def test_deregister(cloud, alice, bob, bundles):
    ec2 = client(cloud, alice)
    image_id = ec2.register_image(ImageLocation=bundles["machine"], Name="short-lived")["ImageId"]
    with pytest.raises(ClientError) as err:
        client(cloud, bob).deregister_image(ImageId=image_id)
    assert code(err) == "InvalidAMIID.NotFound"
    ec2.deregister_image(ImageId=image_id)
    assert image_id not in {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]}
    with pytest.raises(ClientError) as err:
        ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1)
    assert code(err) == "InvalidAMIID.NotFound"
    # The name is free again.
    again = ec2.register_image(ImageLocation=bundles["machine"], Name="short-lived")["ImageId"]
    assert again != image_id
