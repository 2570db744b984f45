"""A throw-away PostgreSQL server for tests and benchmarks: Debian's `postgresql` binaries (initdb, pg_ctl from
/usr/lib/postgresql/<version>/bin), a cluster in a temporary directory owned by an unprivileged user (PostgreSQL
refuses to run as root), listening on a free loopback port with password authentication."""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.harness import die_with_parent, free_port

SUPERUSER = "koala"
# Tests never crash the server itself, only its clients: skip the disk flushes. Benchmarks keep them.
FAST_SETTINGS = {"fsync": "off", "full_page_writes": "off", "synchronous_commit": "off"}


def bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    def __init__(self, listen: str = "127.0.0.1", settings: dict[str, str] | None = None):
        binaries = bin_dir()
        if binaries is None:
            raise RuntimeError("PostgreSQL is not installed (Debian package postgresql, deploy/bootstrap.sh)")
        self.bin, self.listen, self.port = binaries, listen, free_port()
        self.password = secrets.token_hex(16)
        self.dir = Path(tempfile.mkdtemp(prefix="koala-pg-"))
        self.data = self.dir / "data"
        self.settings = {
            "listen_addresses": listen,
            "port": str(self.port),
            "unix_socket_directories": str(self.dir),
            "max_connections": "200",
            "shared_buffers": "64MB",
            **(settings or {}),
        }
        self._user = None if os.geteuid() != 0 else pwd.getpwnam("postgres")
        self.process: subprocess.Popen | None = None

    def _prefix(self) -> list[str]:
        if self._user is None:
            return []
        # As root: run the server and its tools as the unprivileged postgres user.
        return ["setpriv", f"--reuid={self._user.pw_uid}", f"--regid={self._user.pw_gid}", "--clear-groups"]

    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        prefix = self._prefix()
        return subprocess.run(
            [*prefix, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
            cwd=self.dir,
            env=_env(self.password),
        )

    def start(self) -> PostgresServer:
        if self._user is not None:
            os.chown(self.dir, self._user.pw_uid, self._user.pw_gid)
        pwfile = self.dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._user is not None:
            os.chown(pwfile, self._user.pw_uid, self._user.pw_gid)
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        pwfile.unlink()
        with (self.data / "postgresql.conf").open("a") as conf:
            for key, value in self.settings.items():
                conf.write(f"{key} = '{value}'\n")
        hba = self.data / "pg_hba.conf"
        hba.write_text(hba.read_text() + "host all all 0.0.0.0/0 scram-sha-256\n")
        # The server runs as this process's child (not daemonised by pg_ctl), so it dies with the test run even
        # when that is killed.
        with (self.dir / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                [*self._prefix(), str(self.bin / "postgres"), "-D", str(self.data)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.dir,
                env=_env(self.password),
                preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + 60
        while self._ready() is False:
            if self.process.poll() is not None or time.monotonic() > deadline:
                log_text = (self.dir / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"PostgreSQL did not start:\n{log_text}")
            time.sleep(0.1)
        return self

    def _ready(self) -> bool:
        done = subprocess.run(
            [str(self.bin / "pg_isready"), "-h", str(self.dir), "-p", str(self.port), "-t", "1"],
            capture_output=True,
            timeout=10,
        )
        return done.returncode == 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # immediate shutdown: the data is thrown away anyway
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres", host: str | None = None) -> str:
        """`host`: one of the listen addresses (the first by default)."""
        host = host or self.listen.split(",")[0]
        return f"postgresql://{SUPERUSER}:{self.password}@{host}:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser (through the socket directory) and return its unaligned output."""
        done = self._run(
            str(self.bin / "psql"), "-h", str(self.dir), "-p", str(self.port), "-U", SUPERUSER, "-d", database,
            "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql,
        )  # fmt: skip
        return done.stdout.strip()

    def create_database(self, prefix: str = "koala", host: str | None = None) -> str:
        """A new empty database; its URL (through `host`)."""
        name = f"{prefix}_{secrets.token_hex(4)}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name, host)


def _env(password: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "PGPASSWORD": password}
