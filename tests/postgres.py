"""A throw-away PostgreSQL server for tests and benchmarks: cli/postgres_local.py's server (Debian's binaries) in a
temporary directory, as this process's child (it dies with the test run), on a free loopback port."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from cli.postgres_local import LocalPostgres
from tests.harness import die_with_parent

# Tests never crash the server itself, only its clients: skip the disk flushes. Benchmarks keep them.
FAST_SETTINGS = {"fsync": "off", "full_page_writes": "off", "synchronous_commit": "off"}


class PostgresServer:
    def __init__(self, listen: str = "127.0.0.1", settings: dict[str, str] | None = None):
        self.listen, self.settings = listen, dict(settings or {})
        self.dir = Path(tempfile.mkdtemp(prefix="koala-pg-"))
        self.server: LocalPostgres | None = None

    def start(self) -> PostgresServer:
        self.server = LocalPostgres.create(self.dir, self.listen, self.settings, preexec=die_with_parent)
        return self

    def _started(self) -> LocalPostgres:
        if self.server is None:
            raise RuntimeError("the PostgreSQL server is not started")
        return self.server

    @property
    def port(self) -> int:
        return self._started().port

    @property
    def password(self) -> str:
        return self._started().password

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(immediate=True)  # the data is thrown away anyway
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres", host: str | None = None) -> str:
        return self._started().url(database, host)

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self._started().psql(sql, database)

    def create_database(self, prefix: str = "koala", host: str | None = None) -> str:
        """A new empty database; its URL (through `host`)."""
        return self._started().create_database(prefix, host)
