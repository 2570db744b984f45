"""A PostgreSQL server in one directory, from Debian's `postgresql` binaries (initdb, postgres, psql from
/usr/lib/postgresql/<version>/bin): for `koala up --database postgresql` on one machine, the tests and the
benchmarks. A real deployment runs PostgreSQL on its own host(s) and Koala only gets a URL (deploy/).

Layout of DIR:
  data/          the cluster (initdb), owned by the `postgres` user when run as root (PostgreSQL refuses root)
  koala.json     port, listen addresses and the superuser's password (mode 0600): what a restart needs
  server.log     the server's log; the Unix socket lives in DIR as well

Listens on loopback (or the addresses given) with password authentication (scram-sha-256), superuser `koala`.
The server is this process's child that dies with it (`preexec`, for tests) or a detached daemon (`koala up`).
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

SUPERUSER = "koala"
START_TIMEOUT = 60.0


def bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _traversable(directory: Path, user: pwd.struct_passwd) -> bool:
    """Whether `user` may enter `directory` and each of its existing parents (their search permission)."""
    for path in (directory, *directory.parents):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue  # made later, by root, with the default mode (0755 under the usual umask)
        if st.st_uid == user.pw_uid:
            allowed = st.st_mode & 0o100
        elif st.st_gid == user.pw_gid:
            allowed = st.st_mode & 0o010
        else:
            allowed = st.st_mode & 0o001
        if not allowed:
            return False
    return True


class LocalPostgres:
    def __init__(self, directory: Path):
        binaries = bin_dir()
        if binaries is None:
            raise RuntimeError("PostgreSQL is not installed (Debian package postgresql, deploy/bootstrap.sh)")
        self.bin, self.dir = binaries, Path(directory)
        self.data = self.dir / "data"
        saved = json.loads((self.dir / "koala.json").read_text()) if (self.dir / "koala.json").exists() else {}
        self.port: int = saved.get("port", 0)
        self.listen: str = saved.get("listen", "127.0.0.1")
        self.password: str = saved.get("password", "")
        self._user = None if os.geteuid() != 0 else pwd.getpwnam("postgres")
        self.process: subprocess.Popen | None = None

    # --- making one ---
    @classmethod
    def create(
        cls,
        directory: Path,
        listen: str = "127.0.0.1",
        settings: dict[str, str] | None = None,
        preexec: Callable[[], None] | None = None,
    ) -> LocalPostgres:
        """initdb a new cluster in `directory` (empty or absent) and start it. `settings` go to postgresql.conf."""
        directory = Path(directory).absolute()
        user = None if os.geteuid() != 0 else pwd.getpwnam("postgres")
        if user is not None and not _traversable(directory.parent, user):
            raise RuntimeError(
                f"PostgreSQL runs as the user postgres, which cannot reach {directory}: choose a directory whose "
                "parents it may enter (e.g. under /var/lib)"
            )
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        port = _free_port(listen.split(",")[0])
        (directory / "koala.json").write_text(
            json.dumps({"port": port, "listen": listen, "password": secrets.token_hex(16)})
        )
        (directory / "koala.json").chmod(0o600)
        server = cls(directory)
        server._initdb(
            {
                "listen_addresses": listen,
                "port": str(port),
                "unix_socket_directories": str(directory),
                "max_connections": "200",
                "shared_buffers": "64MB",
                **(settings or {}),
            }
        )
        server.start(preexec)
        return server

    def _initdb(self, settings: dict[str, str]) -> None:
        if self._user is not None:
            os.chown(self.dir, self._user.pw_uid, self._user.pw_gid)
        pwfile = self.dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._user is not None:
            os.chown(pwfile, self._user.pw_uid, self._user.pw_gid)
        try:
            self._run(
                str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, f"--pwfile={pwfile}",
                "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync",
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        with (self.data / "postgresql.conf").open("a") as conf:
            for key, value in settings.items():
                conf.write(f"{key} = '{value}'\n")
        hba = self.data / "pg_hba.conf"
        hba.write_text(hba.read_text() + "host all all 0.0.0.0/0 scram-sha-256\n")

    # --- running it ---
    def _prefix(self) -> list[str]:
        if self._user is None:
            return []
        # As root: run the server and its tools as the unprivileged postgres user.
        return ["setpriv", f"--reuid={self._user.pw_uid}", f"--regid={self._user.pw_gid}", "--clear-groups"]

    def _env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "PGPASSWORD": self.password}

    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self._prefix(), *argv], capture_output=True, text=True, timeout=timeout, check=True, cwd=self.dir,
            env=self._env(),
        )  # fmt: skip

    def start(self, preexec: Callable[[], None] | None = None) -> None:
        """Start the server unless it runs: a child that `preexec` prepares (e.g. to die with its parent), or,
        without, a daemon in a session of its own that outlives this process. Returns once it accepts connections."""
        if self.running_pid() is not None:
            return
        (self.data / "postmaster.pid").unlink(missing_ok=True)  # left by a crash or a reboot
        with (self.dir / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                [*self._prefix(), str(self.bin / "postgres"), "-D", str(self.data)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.dir, env=self._env(),
                preexec_fn=preexec, start_new_session=preexec is None,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log_text = (self.dir / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"PostgreSQL did not start:\n{log_text}")
            time.sleep(0.1)

    def ready(self) -> bool:
        done = subprocess.run(
            [str(self.bin / "pg_isready"), "-h", str(self.dir), "-p", str(self.port), "-t", "1"],
            capture_output=True,
            timeout=10,
        )
        return done.returncode == 0

    def running_pid(self) -> int | None:
        """The server's pid (its postmaster.pid, checked alive), or None."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def stop(self, immediate: bool = False, timeout: float = 30.0) -> bool:
        """Stop the server (fast shutdown: sessions cut, data flushed; `immediate`: no flush, for throw-away
        clusters). True if one was running."""
        pid = self.process.pid if self.process is not None and self.process.poll() is None else self.running_pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGQUIT if immediate else signal.SIGINT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.pid == pid:
                if self.process.poll() is not None:
                    return True
            elif self.running_pid() is None:
                return True
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        if self.process is not None and self.process.pid == pid:
            self.process.wait()
        return True

    # --- using it ---
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
        """A new empty database with a unique name; its URL (through `host`)."""
        name = f"{prefix}_{secrets.token_hex(4)}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name, host)

    def ensure_database(self, name: str) -> str:
        """The database `name` (a plain identifier), made if missing; its URL."""
        if not name.isidentifier():
            raise ValueError(f"not a database name: {name!r}")
        if not self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'"):
            self.psql(f"CREATE DATABASE {name}")
        return self.url(name)
