"""Admin pages against the running cloud: clusters and node registration, VM types with the ordering check,
addresses and security groups; a screenshot of each (images and instances: test_admin_instances.py)."""

from __future__ import annotations

import boto3
from botocore.config import Config

from tests.admin.conftest import open_page, screenshot


def test_clusters_register_and_deregister_a_node(admin_cloud, browser_context, admin_password) -> None:
    # A second node on libvirt's test driver, with its own instance directory.
    extra = admin_cloud.add_node("extra", extra={"HYPERVISOR": "test", "INSTANCE_PATH": admin_cloud.dir / "extra"})
    extra.start()
    page = open_page(browser_context, admin_password, "/admin/clusters")
    nodes = page.inner_text(".nodes")
    assert "nc-node1" in nodes and "UP" in nodes
    page.fill(".register-node input[name=node]", extra.url.removeprefix("http://"))
    page.click(".register-node button")
    assert f"Node {extra.url.removeprefix('http://')} is registered in zone1." in page.inner_text(".flash")
    # The CC reaches the new node (its id and state come from the CC's own registry).
    for _ in range(60):
        row = page.locator(".nodes tr", has_text=extra.url)
        if "nc-extra" in row.inner_text() and "UP" in row.inner_text():
            break
        page.wait_for_timeout(250)
        page.reload()
    else:
        raise AssertionError(page.inner_text(".nodes"))
    screenshot(page, "clusters")
    # A bad node address gets the CC's own refusal as a message.
    page.fill(".register-node input[name=node]", "not a host:99999")
    page.click(".register-node button")
    assert page.locator(".flash.error").count() == 1
    page.locator(".nodes tr", has_text=extra.url).locator("button:has-text('Deregister')").click()
    assert "is deregistered from zone1" in page.inner_text(".flash")
    assert extra.url not in page.inner_text(".nodes")
    page.close()


def test_network_page_shows_security_groups(admin_cloud, browser_context, admin_password) -> None:
    eucarc = (admin_cloud.dir / "data" / "clc" / "admin" / "eucarc").read_text()
    values = dict(
        line.removeprefix("export ").split("=", 1) for line in eucarc.splitlines() if line.startswith("export ")
    )
    ec2 = boto3.client(
        "ec2",
        endpoint_url=admin_cloud.url("clc") + "/services/Eucalyptus",
        region_name="eucalyptus",
        aws_access_key_id=values["EC2_ACCESS_KEY"].strip("'\""),
        aws_secret_access_key=values["EC2_SECRET_KEY"].strip("'\""),
        config=Config(retries={"max_attempts": 1}),
    )
    ec2.create_security_group(GroupName="web", Description="<b>web servers</b>")
    ec2.authorize_security_group_ingress(GroupName="web", IpProtocol="tcp", FromPort=80, ToPort=80, CidrIp="0.0.0.0/0")
    page = open_page(browser_context, admin_password, "/admin/network")
    groups = page.inner_text("#groups")
    assert "web" in groups and "tcp 80 from 0.0.0.0/0" in groups
    assert "<b>web servers</b>" in groups  # escaped, shown as text
    screenshot(page, "network")
    page.close()


def test_vm_types_edit_with_ordering_check(admin_cloud, browser_context, admin_password) -> None:
    page = open_page(browser_context, admin_password, "/admin/vmtypes")
    row = page.locator("#vmtype-c1\\.medium")
    row.locator("input[name=disk_gb]").fill("6")
    row.locator("button:has-text('Save')").click()
    assert "VM type c1.medium is now 1 cores, 256 MiB memory, 6 GiB disk." in page.inner_text(".flash")
    # More disk than the next bigger type (m1.large, 10 GiB) breaks the order: refused, with the reason.
    row = page.locator("#vmtype-c1\\.medium")
    row.locator("input[name=disk_gb]").fill("50")
    row.locator("button:has-text('Save')").click()
    assert "component-wise ordered" in page.inner_text(".flash.error")
    assert page.input_value("#vmtype-c1\\.medium input[name=disk_gb]") == "6"
    screenshot(page, "vmtypes")
    # The dashboard's zone table lists the types with free/max from the CC's report.
    page.goto("/admin/")
    assert "c1.medium" in page.inner_text(".zone")
    page.close()
