"""The Volumes admin page in Chromium: every account's volumes and snapshots and the zone's storage; a volume
deleted from the page is gone for its owner (boto3)."""

from __future__ import annotations

import boto3
from botocore.config import Config

from tests.admin.conftest import open_page, screenshot
from tests.waiting import wait_for


def _ec2(cloud):
    rc = cloud.admin_credentials()
    return boto3.client("ec2", endpoint_url=rc["EC2_URL"], region_name="eucalyptus",
                        aws_access_key_id=rc["EC2_ACCESS_KEY"], aws_secret_access_key=rc["EC2_SECRET_KEY"],
                        config=Config(retries={"max_attempts": 1}))  # fmt: skip


def test_volumes_page_lists_and_deletes(admin_cloud, browser_context, admin_password) -> None:
    ec2 = _ec2(admin_cloud)
    volume = ec2.create_volume(AvailabilityZone="zone1", Size=3)["VolumeId"]
    page = open_page(browser_context, admin_password, "/admin/volumes")
    row = page.inner_text(f"#volume-{volume}")
    assert "zone1" in row and "available" in row and "3" in row
    storage = page.inner_text("#storage-zone1")
    assert "zone1" in storage
    screenshot(page, "volumes")
    page.locator(f"#volume-{volume}").locator("button:has-text('Delete')").click()
    assert f"Volume {volume} is being deleted." in page.inner_text(".flash")
    wait_for(lambda: not ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [volume]}])["Volumes"], 30,
             0.2, "the volume gone")  # fmt: skip
    page.close()
