"""The admin pages' security parts on their own: password hashes, sessions, the failed sign-in limit."""

from __future__ import annotations

import json
import stat

import pytest

from services.cloud_controller.admin.passwords import LoginFile, PasswordError, hash_password, verify_password
from services.cloud_controller.admin.ratelimit import FailureLimiter
from services.cloud_controller.admin.sessions import Sessions


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_scrypt_hash_verifies_only_the_password_and_is_salted() -> None:
    first, second = hash_password("correct horse 1"), hash_password("correct horse 1")
    assert first != second and first.startswith("scrypt$131072$8$1$")
    assert verify_password("correct horse 1", first)
    assert not verify_password("correct horse 2", first)
    assert not verify_password("correct horse 1", "garbage")


def test_login_file_is_private_and_first_start_writes_the_password(tmp_path) -> None:
    logins = LoginFile(tmp_path)
    initial = logins.ensure_initial()
    assert initial is not None and logins.ensure_initial() is None  # only once
    password = (tmp_path / "admin" / "web-password").read_text().strip()
    assert verify_password(password, logins.get("admin"))
    for path in (logins.path, tmp_path / "admin" / "web-password"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert password not in logins.path.read_text()
    with pytest.raises(PasswordError):
        logins.set("admin", "short")
    with pytest.raises(PasswordError):
        logins.set("../etc", "long enough password")
    logins.set("ops", "long enough password")
    assert sorted(json.loads(logins.path.read_text())["logins"]) == ["admin", "ops"]


def test_first_start_with_a_given_login_writes_that_one(tmp_path) -> None:
    """The test harness's clouds: one password hashed once, written as a first start writes its own."""
    given = ("given password 1", hash_password("given password 1"))
    logins = LoginFile(tmp_path)
    assert logins.ensure_initial(given) is not None and logins.ensure_initial(given) is None
    assert (tmp_path / "admin" / "web-password").read_text() == "given password 1\n"
    assert logins.get("admin") == given[1] and verify_password("given password 1", logins.get("admin"))
    for path in (logins.path, tmp_path / "admin" / "web-password"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_sessions_expire_when_idle_or_old_and_store_no_cookie() -> None:
    clock = Clock()
    sessions = Sessions(idle=60, lifetime=300, clock=clock)
    cookie, session = sessions.create("admin")
    assert sessions.get(cookie) is session and sessions.get("forged") is None
    assert cookie not in repr(sessions._sessions)  # keyed by a hash of the cookie
    for _ in range(4):
        clock.now += 50
        assert sessions.get(cookie) is session  # kept alive by use
    clock.now += 101
    assert sessions.get(cookie) is None  # past the absolute lifetime
    cookie, _ = sessions.create("admin")
    clock.now += 61
    assert sessions.get(cookie) is None  # idle
    cookie, _ = sessions.create("admin")
    sessions.drop_login("admin")
    assert sessions.get(cookie) is None


def test_failure_limit_locks_the_login_and_the_address() -> None:
    clock = Clock()
    limiter = FailureLimiter(failures=3, address_failures=5, window=100, lockout=50, clock=clock)
    for _ in range(3):
        assert limiter.locked_for("admin", "10.0.0.1") == 0
        limiter.failed("admin", "10.0.0.1")
    assert limiter.locked_for("admin", "10.0.0.2") == 50  # the login, from anywhere
    assert limiter.locked_for("other", "10.0.0.3") == 0
    clock.now += 51
    assert limiter.locked_for("admin", "10.0.0.1") == 0
    # Guessing across names from one address trips the address limit.
    for name in ("a", "b"):
        limiter.failed(name, "10.0.0.1")
    assert limiter.locked_for("fresh-name", "10.0.0.1") > 0
    assert limiter.locked_for("fresh-name", "10.0.0.9") == 0
    # Success clears the login's count, so old failures do not add up with new ones.
    limiter.failed("c", "10.0.0.7")
    limiter.failed("c", "10.0.0.7")
    limiter.succeeded("c")
    limiter.failed("c", "10.0.0.8")
    assert limiter.locked_for("c", "10.0.0.8") == 0
