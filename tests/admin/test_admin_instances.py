"""Images and instances in the browser, against the real cloud: an image made public and deregistered from the
images page; a QEMU guest's console read and the guest terminated from the instances page; each change checked
through boto3, because the pages must act through the same engine as the EC2 API."""

from __future__ import annotations

import time
from collections.abc import Callable

import boto3
import pytest
from botocore.config import Config

from cli.guest_image import ensure_registered
from tests.admin.conftest import open_page, screenshot
from tests.clc.compute_cloud import bundle_and_upload
from tests.harness import Cloud


@pytest.fixture(scope="module")
def ec2(admin_cloud: Cloud):
    creds = admin_cloud.admin_credentials()
    return boto3.client(
        "ec2",
        endpoint_url=creds["EC2_URL"],
        region_name="eucalyptus",
        aws_access_key_id=creds["EC2_ACCESS_KEY"],
        aws_secret_access_key=creds["EC2_SECRET_KEY"],
        config=Config(retries={"max_attempts": 1}),
    )


def _until(check: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out: {what()}"
        time.sleep(0.5)


def test_images_visibility_and_deregister(admin_cloud, browser_context, admin_password, ec2, tmp_path) -> None:
    location = bundle_and_upload(admin_cloud, tmp_path, "pagesimg", "admin-pages")
    image_id = ec2.register_image(ImageLocation=location, Name="pages-image")["ImageId"]
    page = open_page(browser_context, admin_password, "/admin/images")
    row = page.locator(f"#image-{image_id}")
    assert "private" in row.inner_text() and location in row.inner_text()

    row.locator("button:has-text('Make public')").click()
    assert f"Image {image_id} is now public." in page.inner_text(".flash")
    permissions = ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")
    assert permissions["LaunchPermissions"] == [{"Group": "all"}]
    assert "public" in page.locator(f"#image-{image_id}").inner_text()
    screenshot(page, "images")

    page.locator(f"#image-{image_id}").locator("button:has-text('Deregister')").click()
    assert f"Image {image_id} was deregistered." in page.inner_text(".flash")
    assert page.locator(f"#image-{image_id}").count() == 0
    assert ec2.describe_images(Owners=["self"], Filters=[{"Name": "image-id", "Values": [image_id]}])["Images"] == []
    page.close()


def test_instance_console_and_terminate(admin_cloud, browser_context, admin_password, ec2) -> None:
    images = ensure_registered(admin_cloud.dir, admin_cloud.aio.admin_eucarc_source(), log=lambda _: None)
    launched = ec2.run_instances(ImageId=images["machine"], MinCount=1, MaxCount=1, InstanceType="c1.medium")
    instance_id = launched["Instances"][0]["InstanceId"]
    try:
        page = open_page(browser_context, admin_password, "/admin/instances")

        def state_on_page() -> str:
            page.goto(f"/admin/instances?q={instance_id}")
            return page.locator(f"#instance-{instance_id} td").nth(2).inner_text().split("\n")[0]

        _until(lambda: state_on_page() == "running", 120, lambda: page.inner_text("main"))
        # Filtering by state keeps it; another state hides it.
        page.goto("/admin/instances?state=running")
        assert page.locator(f"#instance-{instance_id}").count() == 1
        page.goto("/admin/instances?state=terminated")
        assert page.locator(f"#instance-{instance_id}").count() == 0

        # The console page shows the guest's own serial output, as GetConsoleOutput gives it.
        page.goto("/admin/instances")
        page.locator(f"#instance-{instance_id}").locator("a:has-text('console')").click()
        ready = f"KOALA-GUEST ready instance={instance_id}"

        def console_text() -> str:
            page.reload()
            return page.inner_text("#console")

        _until(lambda: ready in console_text(), 180, lambda: page.inner_text("main"))
        assert f"KOALA-GUEST booted instance={instance_id}" in page.inner_text("#console")
        screenshot(page, "console")

        page.goto("/admin/instances")
        page.check(f"#instance-{instance_id} input[name=instance_id]")
        page.click("#terminate button[type=submit]")
        assert f"Terminating {instance_id} (was running)." in page.inner_text(".flash")
        screenshot(page, "instances")
        _until(lambda: state_on_page() == "terminated", 120, lambda: page.inner_text("main"))
        described = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        assert described["State"]["Name"] == "terminated"
        page.close()
    finally:
        ec2.terminate_instances(InstanceIds=[instance_id])  # never leave a guest running behind a failure
