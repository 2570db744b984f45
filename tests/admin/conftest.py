"""Fixtures for the admin page tests: one real cloud per module and Debian's headless Chromium via Playwright."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.allinone import qemu_usable
from tests.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.harness import Cloud

playwright_api = pytest.importorskip("playwright.sync_api")

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-results" / "admin"


@pytest.fixture(scope="package")
def admin_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """The CLC with Walrus, a CC and an NC on QEMU, so the instance pages show a real guest's console."""
    if os.geteuid() != 0 or not qemu_usable():
        pytest.fail("libvirtd with QEMU is not usable: deploy/bootstrap.sh sets it up")
    instances = Path(f"/var/tmp/koala-admin-{secrets.token_hex(4)}")  # readable by libvirt's qemu user
    instances.mkdir(mode=0o755)
    nc = {"HYPERVISOR": "qemu", "INSTANCE_PATH": instances, "SWAP_SIZE": 32}
    # The CLC makes its own first login here, as on a real first start: these tests sign in with it.
    cloud = Cloud(tmp_path_factory.mktemp("admin") / "cloud", extra={"nc": nc}, fresh_admin_login=True)
    try:
        cloud.start()
        yield cloud
    finally:
        cloud.stop()
        shutil.rmtree(instances, ignore_errors=True)


@pytest.fixture(scope="package")
def browser_context(admin_cloud: Cloud) -> Iterator:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="koala-chromium-") as profile, playwright_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            accept_downloads=True,
            base_url=admin_cloud.url("clc"),
        )
        context.set_default_timeout(15000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="package")
def admin_password(admin_cloud: Cloud) -> str:
    return (admin_cloud.dir / "data" / "clc" / "admin" / "web-password").read_text().strip()


def screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sign_in(page, password: str, login: str = "admin", next_path: str = "/admin/") -> None:
    page.goto(f"/admin/login?next={next_path}")
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def open_page(context, password: str, path: str):
    """A new tab on `path`, signing in first if the context has no session."""
    page = context.new_page()
    page.goto(path)
    if "/admin/login" in page.url:
        page.fill("input[name=login]", "admin")
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        assert not page.url.split("?")[0].endswith("/admin/login"), page.inner_text("main")
    return page
