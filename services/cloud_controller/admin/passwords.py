"""Admin web logins: scrypt password hashes in a private JSON file in the CLC's state directory.

The file (`admin-logins.json`, mode 0600) maps a login name to `scrypt$N$r$p$salt$hash` (base64). It lives outside
the database so that `koala admin set-password` works on a stopped CLC and takes effect on a running one at the next
sign-in (the file is re-read when its mtime changes). At first start the CLC creates the login `admin` with a random
password and writes that password to `admin/web-password` (0600) beside the admin credentials; it is never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
from pathlib import Path

LOGINS_FILE = "admin-logins.json"
INITIAL_PASSWORD_FILE = "admin/web-password"  # beside the admin credentials (identity.bootstrap)
DEFAULT_LOGIN = "admin"
# scrypt cost as OWASP recommends (N=2^17, r=8, p=1: 128 MiB and a few tenths of a second per hash). The cost is
# stored in each hash, so it can be raised later without invalidating existing passwords.
N, R, P = 1 << 17, 8, 1
MAXMEM = 256 * 1024 * 1024
MIN_PASSWORD, MAX_PASSWORD = 10, 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class PasswordError(ValueError):
    pass


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise PasswordError(
            "a login name is 1-64 letters, digits, '_', '.', '@' or '-', starting with a letter or digit"
        )
    return name


def check_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise PasswordError(f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def hash_password(password: str) -> str:
    """CPU- and memory-hard: call it in a thread (asyncio.to_thread), never on the event loop."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, maxmem=MAXMEM, dklen=32)
    return f"scrypt${N}${R}${P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode()[: MAX_PASSWORD * 4],
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=MAXMEM,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


# A hash of a random password: checked for unknown names so that they take as long as known ones.
_DUMMY = f"scrypt${N}${R}${P}${_b64(b'0' * 16)}${_b64(b'0' * 32)}"


def verify_or_dummy(password: str, encoded: str | None) -> bool:
    if encoded is None:
        verify_password(password, _DUMMY)
        return False
    return verify_password(password, encoded)


def _write_private(path: Path, text: str) -> None:
    """Write atomically, never world-readable even for a moment."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class LoginFile:
    """The login name -> hash map. Blocking file I/O: call from a thread on a running service."""

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / LOGINS_FILE
        self._cache: dict[str, str] = {}
        self._mtime: float | None = None

    def load(self) -> dict[str, str]:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._cache, self._mtime = {}, None
            return {}
        if mtime != self._mtime:
            data = json.loads(self.path.read_text())
            self._cache = {str(k): str(v) for k, v in data.get("logins", {}).items()}
            self._mtime = mtime
        return dict(self._cache)

    def get(self, name: str) -> str | None:
        return self.load().get(name)

    def set(self, name: str, password: str) -> None:
        check_name(name)
        check_password(password)
        logins = self.load()
        logins[name] = hash_password(password)
        self._save(logins)

    def remove(self, name: str) -> bool:
        logins = self.load()
        if logins.pop(name, None) is None:
            return False
        self._save(logins)
        return True

    def _save(self, logins: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(self.path, json.dumps({"logins": logins}, indent=1, sort_keys=True) + "\n")
        self._mtime = None

    def ensure_initial(self, given: tuple[str, str] | None = None) -> str | None:
        """First start: create `admin` with a random password written to `admin/web-password`; its path, or None.
        `given` (a password and its `hash_password` hash) stands for the random one: the test harness seeds its many
        clouds with one login hashed once, as each scrypt hash costs about half a second of CPU."""
        if self.path.exists():
            return None
        password = given[0] if given else secrets.token_urlsafe(18)
        initial = self.path.parent / INITIAL_PASSWORD_FILE
        initial.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_private(initial, password + "\n")
        if given:
            self._save({DEFAULT_LOGIN: given[1]})
        else:
            self.set(DEFAULT_LOGIN, password)
        return str(initial)
