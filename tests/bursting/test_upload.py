"""Upload-and-register on demand: a remote zone with KOALA_REMOTE_AUTO_UPLOAD and no image map. A launch of a
local image (with its kernel and ramdisk) gets the images re-bundled for the remote cloud (decrypted by the local
Walrus, keys wrapped for the remote's cloud certificate, signed with the remote account's key), uploaded to the
remote's S3 and registered there, once for any number of launches; a kill -9 of the CC in the middle of the upload,
or after the remote registered the image but before the CC heard of it, resumes after the restart with nothing
left twice or unaccounted; a refused upload and a missing certificate are clear errors at launch.

The zone ("uploads") offers c1.medium only (run as the remote's m1.small), so the other bursting tests' m1.small
launches never land in it. Between its CC and the remote sit two FaultProxy: EC2 and S3."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from common import pki
from common.messages.clusters import DeregisterClusterRequest
from common.rpc import Empty, RpcError
from tests.bursting.support import FaultProxy, RemoteZoneCC
from tests.clc.compute_cloud import bundle_and_upload, wait_state
from tests.clc.ec2_helpers import REGION, admin_call, client, code
from tests.waiting import wait_for

ZONE = "uploads"
VM = "c1.medium"


class UploadZone:
    def __init__(self, world, work: Path):
        self.world = world
        rc = world.remote.admin_credentials()
        self.ec2_proxy = FaultProxy(rc["EC2_URL"])
        self.s3_proxy = FaultProxy(rc["S3_URL"], path=urlsplit(rc["S3_URL"]).path)
        key = work / "remote-signing-key.pem"
        pki.write_private(key, Path(rc["EC2_PRIVATE_KEY"]).read_bytes())
        self.settings = {
            "KOALA_REMOTE_ENDPOINT": self.ec2_proxy.url,
            "KOALA_REMOTE_VMTYPE_MAP": f"{VM}=m1.small",
            "KOALA_REMOTE_MAX_INSTANCES": 10,
            "KOALA_REMOTE_POLL_MAX": 2,
            "KOALA_REMOTE_KEEP_UNUSED": 6,  # the group made for the launches stays 6 s after the last ends
            "KOALA_REMOTE_AUTO_UPLOAD": True,
            "KOALA_REMOTE_S3_ENDPOINT": self.s3_proxy.url,
            "KOALA_REMOTE_CLOUD_CERT": rc["EUCALYPTUS_CERT"],
            "KOALA_REMOTE_SIGNING_CERT": rc["EC2_CERT"],
            "KOALA_REMOTE_SIGNING_KEY": key,
            "KOALA_WALRUS_URL": world.local.url("walrus"),
        }
        self.cc = RemoteZoneCC(world.local, ZONE, self.settings, world.remote_creds)
        self.cc.start()
        self.cc.register()
        self.s3 = boto3.client(
            "s3",
            endpoint_url=rc["S3_URL"],
            region_name=REGION,
            aws_access_key_id=world.remote_creds.access_key,
            aws_secret_access_key=world.remote_creds.secret_key,
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
        )
        local = client(world.local, world.local_creds)

        def register(name: str, *extra: str, **params) -> str:
            location = bundle_and_upload(world.local, work / name, name, f"up-{name}", *extra)
            return local.register_image(ImageLocation=location, Name=name, **params)["ImageId"]

        self.kernel = register("vmlinuz-up", "--kernel", "true")
        self.ramdisk = register("initrd-up", "--ramdisk", "true")
        self.machine = register("machine-up", KernelId=self.kernel, RamdiskId=self.ramdisk)
        world.wait_zone(ZONE, vm_type=VM)

    def stop(self) -> None:
        self.cc.stop()
        with contextlib.suppress(RpcError):  # refused while a failed test left instances in it
            admin_call(self.world.local, "DeregisterCluster", DeregisterClusterRequest(zone=ZONE), Empty)
        self.ec2_proxy.close()
        self.s3_proxy.close()

    def launch(self, image: str) -> str:
        answer = self.world.local_ec2().run_instances(
            ImageId=image, MinCount=1, MaxCount=1, InstanceType=VM, Placement={"AvailabilityZone": ZONE}
        )
        return answer["Instances"][0]["InstanceId"]

    def remote_images(self) -> dict[str, dict]:
        """The remote admin's images made by this zone, by their bucket (`<prefix>-<local image id>`)."""
        found = {}
        for image in self.world.remote_ec2().describe_images(Owners=["self"])["Images"]:
            bucket = image.get("ImageLocation", "").partition("/")[0]
            if re.fullmatch(r"koala-[0-9a-f]{10}-e[mkr]i-[0-9a-f]+", bucket):
                assert bucket not in found, f"two remote images from {bucket}"
                found[bucket] = image
        return found

    def bucket_keys(self, bucket: str) -> list[str]:
        return sorted(o["Key"] for o in self.s3.list_objects_v2(Bucket=bucket).get("Contents") or [])

    def registrations(self) -> int:
        return sum(1 for body in self.ec2_proxy.forwarded if b"Action=RegisterImage" in body)


@pytest.fixture(scope="module")
def zone(world, tmp_path_factory):
    made = UploadZone(world, tmp_path_factory.mktemp("upload"))
    try:
        yield made
    finally:
        made.ec2_proxy.release()
        made.s3_proxy.release()
        made.stop()


def _remote_of(world, local_id: str) -> dict:
    mine = [i for i in world.remote_instances() if i["LocalTags"]["koala-instance"] == local_id]
    assert len(mine) == 1, mine
    return mine[0]


def test_launches_upload_the_image_once_and_a_kill_9_mid_upload_resumes(world, zone):
    ec2 = world.local_ec2()
    manifest = f"{zone.machine}.manifest.xml"
    # The machine image's manifest PUT is held (never forwarded): its parts are in the remote bucket, the
    # manifest is not, when the CC is killed.
    zone.s3_proxy.hold(lambda method, path, body: method == "PUT" and path.endswith("/" + manifest), forward=False)
    first, second = zone.launch(zone.machine), zone.launch(zone.machine)  # both accepted (pending) at once
    wait_for(lambda: zone.s3_proxy.waiting >= 1, 60, what="the manifest PUT held")
    zone.cc.kill()
    zone.s3_proxy.release()
    bucket = next(path.split("/")[-2] for _, path in zone.s3_proxy.seen if path.endswith(f"/{zone.machine}.part.0"))
    stored = zone.bucket_keys(bucket)
    assert stored and manifest not in stored  # killed mid-upload: parts without their manifest

    zone.cc.start()
    world.wait_zone(ZONE, vm_type=VM)  # the CLC's view of the zone, down while its CC was, is fresh again
    running = wait_state(ec2, [first, second], {"running"}, timeout=60)
    images = zone.remote_images()
    # Machine, kernel and ramdisk: each uploaded and registered once, in its own bucket, of its own kind.
    prefix = bucket[: -len(zone.machine)]
    assert sorted(images) == sorted(prefix + i for i in (zone.machine, zone.kernel, zone.ramdisk))
    by_local = {b[len(prefix) :]: images[b] for b in images}
    assert by_local[zone.machine]["ImageId"].startswith("emi-")
    assert by_local[zone.kernel]["ImageId"].startswith("eki-")
    assert by_local[zone.ramdisk]["ImageId"].startswith("eri-")
    assert zone.registrations() == 3
    # The bucket holds the bundle that was registered, nothing left from before the crash.
    raw = zone.s3.get_object(Bucket=bucket, Key=manifest)["Body"].read()
    parts = re.findall(rb"<filename>([^<]+)</filename>", raw)
    assert zone.bucket_keys(bucket) == sorted([manifest] + [p.decode() for p in parts])
    # Both launches run remotely from the uploaded images, with the kernel and ramdisk uploaded with them.
    for local_id in (first, second):
        theirs = _remote_of(world, local_id)
        assert theirs["ImageId"] == by_local[zone.machine]["ImageId"]
        assert theirs.get("KernelId") == by_local[zone.kernel]["ImageId"]
        assert theirs.get("RamdiskId") == by_local[zone.ramdisk]["ImageId"]
        assert running[local_id]["PublicIpAddress"] == theirs["PublicIpAddress"]

    # The mapping is kept: a later launch uploads nothing.
    puts = sum(1 for method, _ in zone.s3_proxy.seen if method == "PUT")
    third = zone.launch(zone.machine)
    wait_state(ec2, [third], {"running"}, timeout=60)
    assert _remote_of(world, third)["ImageId"] == by_local[zone.machine]["ImageId"]
    assert zone.registrations() == 3 and sum(1 for method, _ in zone.s3_proxy.seen if method == "PUT") == puts
    assert "Traceback" not in zone.cc.log() and world.remote_creds.secret_key not in zone.cc.log()

    ec2.terminate_instances(InstanceIds=[first, second, third])
    wait_state(ec2, [first, second, third], {"terminated"})
    wait_for(lambda: not [i for i in world.remote_instances() if i["InstanceType"] == "m1.small"], what="none left")
    # The remote group made for them stays a while (KOALA_REMOTE_KEEP_UNUSED), then goes.
    group = f"{prefix}{world.local_creds.account_id}-default"

    def groups() -> list[str]:
        return [g["GroupName"] for g in world.remote_ec2().describe_security_groups()["SecurityGroups"]]

    assert group in groups()
    wait_for(lambda: group not in groups(), 30, what=f"remote group {group} deleted once unused for 6 s")


def test_a_kill_9_after_the_remote_registered_the_image_leaves_one_image(world, zone, tmp_path):
    ec2 = world.local_ec2()
    image = client(world.local, world.local_creds).register_image(
        ImageLocation=bundle_and_upload(world.local, tmp_path, "second-up", "up-second"), Name="second-up"
    )["ImageId"]
    # A bucket with this zone's prefix that no upload names (a lost database): deleted at the next start.
    prefix = next(iter(zone.remote_images())).rsplit("-", 2)[0]
    stray = f"{prefix}-emi-0000dead"
    zone.s3.create_bucket(Bucket=stray)
    zone.s3.put_object(Bucket=stray, Key="x.part.0", Body=b"left over")
    zone.ec2_proxy.hold(lambda method, path, body: b"Action=RegisterImage" in body, forward=True)
    before = zone.registrations()
    launched = zone.launch(image)
    wait_for(lambda: zone.ec2_proxy.waiting >= 1, 60, what="the RegisterImage answer held")
    zone.cc.kill()
    zone.ec2_proxy.release()
    zone.cc.start()
    world.wait_zone(ZONE, vm_type=VM)  # the CLC's view of the zone, down while its CC was, is fresh again
    wait_state(ec2, [launched], {"running"}, timeout=60)
    registered = [i for b, i in zone.remote_images().items() if b.endswith(image)]
    assert len(registered) == 1  # the one the remote made before the crash, found again, not a second
    assert zone.registrations() == before + 1
    assert _remote_of(world, launched)["ImageId"] == registered[0]["ImageId"]
    wait_for(lambda: stray not in [b["Name"] for b in zone.s3.list_buckets()["Buckets"]], what="stray bucket gone")

    # The remote's copy deregistered behind our back: the launch that finds out fails, the next uploads it again.
    world.remote_ec2().deregister_image(ImageId=registered[0]["ImageId"])
    failed = zone.launch(image)
    ended = wait_state(ec2, [failed], {"terminated"}, timeout=60)[failed]
    assert "InvalidAMIID" in ended["StateReason"]["Message"]
    again = zone.launch(image)
    wait_state(ec2, [again], {"running"}, timeout=60)
    renewed = [i for b, i in zone.remote_images().items() if b.endswith(image)]
    assert len(renewed) == 1 and renewed[0]["ImageId"] != registered[0]["ImageId"]
    assert _remote_of(world, again)["ImageId"] == renewed[0]["ImageId"]
    ec2.terminate_instances(InstanceIds=[launched, again])
    wait_state(ec2, [launched, again], {"terminated"})


def test_a_refused_upload_is_a_clear_error(world, zone, tmp_path):
    ec2 = world.local_ec2()
    image = client(world.local, world.local_creds).register_image(
        ImageLocation=bundle_and_upload(world.local, tmp_path, "denied-up", "up-denied"), Name="denied-up"
    )["ImageId"]
    zone.s3_proxy.deny(lambda method, path, body: method == "PUT" and image in path)
    launched = zone.launch(image)
    ended = wait_state(ec2, [launched], {"terminated"}, timeout=60)[launched]
    assert "AccessDenied" in ended["StateReason"]["Message"]
    # Launches meanwhile are refused at once, saying why; nothing is left in the remote cloud.
    with pytest.raises(ClientError) as refused:
        zone.launch(image)
    assert code(refused) == "InvalidAMIID.Unavailable"
    assert "refused image" in str(refused.value) and "AccessDenied" in str(refused.value)
    assert not [b for b in zone.remote_images() if b.endswith(image)]
    assert not [b["Name"] for b in zone.s3.list_buckets()["Buckets"] if b["Name"].endswith(image)]


def test_auto_upload_without_the_remote_cloud_certificate_is_refused_at_launch(world, zone):
    settings = {k: v for k, v in zone.settings.items() if k != "KOALA_REMOTE_CLOUD_CERT"}
    cc = RemoteZoneCC(world.local, "nocert", settings, world.remote_creds)
    cc.start()
    try:
        cc.register()
        world.wait_zone("nocert", vm_type=VM)
        with pytest.raises(ClientError) as refused:
            world.local_ec2().run_instances(
                ImageId=zone.machine, MinCount=1, MaxCount=1, InstanceType=VM, Placement={"AvailabilityZone": "nocert"}
            )
        assert code(refused) == "InvalidAMIID.Unavailable"
        assert "KOALA_REMOTE_CLOUD_CERT" in str(refused.value) and zone.machine in str(refused.value)
    finally:
        cc.stop()
        admin_call(world.local, "DeregisterCluster", DeregisterClusterRequest(zone="nocert"), Empty)


def test_the_remote_copy_keeps_the_architecture_and_goes_with_the_local_image_even_across_a_kill_9(
    world, zone, tmp_path
):
    ec2, local = world.local_ec2(), client(world.local, world.local_creds)

    def register(name: str, **params) -> str:
        location = bundle_and_upload(world.local, tmp_path / name, name, f"up-{name}")
        return local.register_image(ImageLocation=location, Name=name, **params)["ImageId"]

    def buckets() -> list[str]:
        return [b["Name"] for b in zone.s3.list_buckets()["Buckets"]]

    i386, other = register("i386-up", Architecture="i386"), register("x86-up")
    launched = [zone.launch(i386), zone.launch(other)]
    wait_state(ec2, launched, {"running"}, timeout=60)
    copies = {local_id: next(b for b in zone.remote_images() if b.endswith(local_id)) for local_id in (i386, other)}
    assert zone.remote_images()[copies[i386]]["Architecture"] == "i386"
    assert zone.remote_images()[copies[other]]["Architecture"] == "x86_64"
    assert set(copies.values()) <= set(buckets())
    ec2.terminate_instances(InstanceIds=launched)
    wait_state(ec2, launched, {"terminated"})

    # The CC dies while removing the i386 copy (the remote's DeregisterImage held, never forwarded), and the
    # other image is deregistered while it is down: after the restart both copies go, image and bucket.
    zone.ec2_proxy.hold(lambda method, path, body: b"Action=DeregisterImage" in body, forward=False)
    local.deregister_image(ImageId=i386)
    wait_for(lambda: zone.ec2_proxy.waiting >= 1, 30, what="the remote DeregisterImage held")
    zone.cc.kill()
    zone.ec2_proxy.release()
    local.deregister_image(ImageId=other)
    assert set(copies.values()) <= set(zone.remote_images()) and set(copies.values()) <= set(buckets())
    zone.cc.start()
    for bucket in copies.values():
        wait_for(lambda b=bucket: b not in zone.remote_images(), 30, what=f"the remote image from {bucket} gone")
        wait_for(lambda b=bucket: b not in buckets(), 30, what=f"the remote bucket {bucket} gone")
    assert "Traceback" not in zone.cc.log()
