"""Sign-in, sessions, CSRF and the failed sign-in limit of the admin pages, in headless Chromium against a real
CLC (with Walrus, a CC and a test-driver NC)."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request

from services.cloud_controller.admin.passwords import LoginFile
from tests.admin.conftest import screenshot, sign_in


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_unauthenticated_pages_redirect_to_sign_in(admin_cloud, browser_context) -> None:
    opener = urllib.request.build_opener(_NoRedirect)
    for path in ("/admin/", "/admin/vmtypes", "/admin/clusters"):
        try:
            opener.open(admin_cloud.url("clc") + path, timeout=10)
            raise AssertionError(f"{path} answered without a session")
        except urllib.error.HTTPError as err:
            assert err.code == 303
            assert err.headers["Location"] == f"/admin/login?next={path}"
    # A POST without a session goes to sign-in too, and changes nothing.
    request = urllib.request.Request(admin_cloud.url("clc") + "/admin/vmtypes/delete", data=b"name=m1.large")
    try:
        opener.open(request, timeout=10)
        raise AssertionError("a POST without a session was accepted")
    except urllib.error.HTTPError as err:
        assert err.code == 303 and err.headers["Location"].startswith("/admin/login")
    browser_context.clear_cookies()
    page = browser_context.new_page()
    page.goto("/admin/vmtypes")
    assert page.url.endswith("/admin/login?next=/admin/vmtypes")
    screenshot(page, "login")
    page.close()


def test_sign_in_cookie_and_dashboard(admin_cloud, browser_context, admin_password) -> None:
    page = browser_context.new_page()
    sign_in(page, "not the password")
    assert "Wrong login name or password." in page.inner_text("#login-error")
    sign_in(page, admin_password)
    assert page.url.endswith("/admin/")
    cookie = next(c for c in browser_context.cookies() if c["name"] == "koala_admin")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/admin/"
    assert not cookie["secure"]  # plain HTTP here; under TLS the cookie is Secure
    services = page.inner_text("#services")
    for role in ("clc", "walrus", "cc"):
        assert role in services
    # Service health comes from live DescribeService calls: Walrus and the CC answer with their ids.
    page.wait_for_function("document.querySelectorAll('#services .up').length >= 3")
    assert "walrus" in services and "cc-zone1" in services
    screenshot(page, "dashboard")
    page.close()


def test_post_without_valid_csrf_token_is_refused(admin_cloud, browser_context, admin_password) -> None:
    logins = admin_cloud.dir / "data" / "clc" / "admin-logins.json"
    before = logins.read_text()
    page = browser_context.new_page()
    page.goto("/admin/password")
    if "/admin/login" in page.url:
        sign_in(page, admin_password, next_path="/admin/password")
    form = {"current": admin_password, "new": "a-new-password-1", "again": "a-new-password-1"}
    for token in (None, "forged-token"):
        data = dict(form, csrf=token) if token else form
        answer = page.request.post("/admin/password", form=data, max_redirects=0)
        assert answer.status == 403
        assert "security token" in answer.text()
    # A cross-site origin is refused even with the session's token.
    token = page.get_attribute("input[name=csrf]", "value")
    answer = page.request.post(
        "/admin/password", form=dict(form, csrf=token), headers={"Origin": "http://evil.example"}, max_redirects=0
    )
    assert answer.status == 403
    assert logins.read_text() == before  # the password did not change
    screenshot(page, "password")
    page.close()


def test_repeated_wrong_password_trips_the_limit(admin_cloud, browser_context) -> None:
    # A second login, added with `koala admin set-password`; the running CLC picks it up.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "admin",
            "--state-dir",
            str(admin_cloud.dir),
            "set-password",
            "operator",
            "--password-stdin",
        ],
        input="operator-password-1\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "operator" in LoginFile(admin_cloud.dir / "data" / "clc").load()
    browser_context.clear_cookies()  # signed out
    page = browser_context.new_page()
    for _ in range(5):
        sign_in(page, "wrong-password", login="operator")
        assert "Wrong login name or password." in page.inner_text("#login-error")
    sign_in(page, "operator-password-1", login="operator")  # the right one, but too late
    assert "Too many failed sign-ins" in page.inner_text("#login-error")
    assert "/admin/login" in page.url
    screenshot(page, "login-locked")
    page.close()
