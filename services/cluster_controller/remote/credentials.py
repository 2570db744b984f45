"""The remote cloud's access key: read from a file on the CC host that only the CC's user can read.

The file uses eucarc syntax (`export EC2_ACCESS_KEY='...'`), so the remote's own eucarc can be copied as is; keys
other than EC2_ACCESS_KEY, EC2_SECRET_KEY and EC2_USER_ID are ignored. The secret never appears in a repr, a log
or an error.
"""

from __future__ import annotations

import os
import shlex
import stat
from dataclasses import dataclass, field
from pathlib import Path

from common.config import ConfigError, parse_conf
from common.pki import write_private

MAX_FILE = 64 * 1024


@dataclass(frozen=True)
class RemoteCredentials:
    access_key: str
    secret_key: str = field(repr=False)
    account_id: str = ""  # EC2_USER_ID, if the file has it: the account bundles re-made for the remote name

    def __str__(self) -> str:
        return f"access key {self.access_key}"


def read_private(path: Path, setting: str) -> bytes:
    """The bytes of a file that must belong to the CC's user and be readable by nobody else, or ConfigError naming
    `setting` and saying what is wrong with the file (never what is in it)."""
    try:
        # Opened without following a link, then checked through the open descriptor: no swap between check and read.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as err:
        raise ConfigError(f"{setting}: cannot open {path} ({err.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{setting}: {path} is not a regular file")
        if info.st_uid != os.geteuid():
            raise ConfigError(f"{setting}: {path} must belong to the CC's user (uid {os.geteuid()})")
        if info.st_mode & 0o077:
            raise ConfigError(
                f"{setting}: {path} is readable by others (mode {stat.S_IMODE(info.st_mode):o}); chmod 600 it"
            )
        raw = handle.read(MAX_FILE + 1)
    if len(raw) > MAX_FILE:
        raise ConfigError(f"{setting}: {path} is larger than {MAX_FILE} bytes")
    return raw


def load(path: Path | None) -> RemoteCredentials:
    """The credentials in `path`, or ConfigError saying what is wrong with the file (never what is in it)."""
    if path is None:
        raise ConfigError("KOALA_REMOTE_CREDENTIALS: a remote zone needs the file with the remote's access key")
    raw = read_private(path, "KOALA_REMOTE_CREDENTIALS")
    try:
        settings = parse_conf(raw.decode(), str(path))
    except (ConfigError, UnicodeDecodeError):
        raise ConfigError(f"KOALA_REMOTE_CREDENTIALS: {path} is not KEY='value' lines") from None
    access = settings.get("EC2_ACCESS_KEY")
    secret = settings.get("EC2_SECRET_KEY")
    if access is None or secret is None or not access.value or not secret.value:
        raise ConfigError(f"KOALA_REMOTE_CREDENTIALS: {path} needs EC2_ACCESS_KEY and EC2_SECRET_KEY")
    account = settings.get("EC2_USER_ID")
    return RemoteCredentials(access.value, secret.value, account.value if account is not None else "")


def write(path: Path, access_key: str, secret_key: str) -> None:
    """Write the file for the CC (mode 600 from the start)."""
    text = f"EC2_ACCESS_KEY={shlex.quote(access_key)}\nEC2_SECRET_KEY={shlex.quote(secret_key)}\n"
    write_private(path, text.encode())
