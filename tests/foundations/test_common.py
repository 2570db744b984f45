"""Ids, the storage helper's migrations, the replay cache and the PKI command."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from common import db, ids, pki
from common.mounts import Mount, mount_table
from common.signing import ReplayCache


def test_ids() -> None:
    value = ids.new_id("i")
    assert ids.is_id(value, "i") and len(value) == 10
    assert ids.is_id("emi-4F1C02AB", "emi")
    assert not ids.is_id("i-4F1C02AB", "emi")
    assert not ids.is_id("i-123")
    assert not ids.is_id("../etc/passwd")
    assert ids.normalize("i-4F1C02AB") == "i-4f1c02ab"
    assert len({ids.new_id("r") for _ in range(1000)}) > 990
    with pytest.raises(ValueError):
        ids.new_id("nope")


def test_migrations_apply_in_order_once(tmp_path: Path) -> None:
    package = tmp_path / "fake_migrations"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "0001_init.sql").write_text("CREATE TABLE things (id TEXT PRIMARY KEY);")
    sys.path.insert(0, str(tmp_path))
    try:

        async def scenario() -> None:
            conn = await db.open_db(tmp_path / "a.db", "fake_migrations")
            assert (await (await conn.execute("PRAGMA journal_mode")).fetchone())[0] == "wal"
            await conn.close()
            (package / "0002_more.sql").write_text("ALTER TABLE things ADD COLUMN name TEXT;")
            conn = await db.open_db(tmp_path / "a.db", "fake_migrations")
            rows = await (await conn.execute("SELECT version, name FROM schema_version")).fetchall()
            assert [tuple(r) for r in rows] == [(1, "0001_init.sql"), (2, "0002_more.sql")]
            await conn.execute("INSERT INTO things VALUES ('a', 'b')")
            await conn.close()
            (package / "0004_gap.sql").write_text("SELECT 1;")
            with pytest.raises(db.MigrationError, match="out of sequence"):
                await db.open_db(tmp_path / "a.db", "fake_migrations")

        asyncio.run(scenario())
    finally:
        sys.path.remove(str(tmp_path))


def test_failed_migration_leaves_the_previous_version(tmp_path: Path) -> None:
    package = tmp_path / "bad_migrations"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "0001_init.sql").write_text("CREATE TABLE t (x INTEGER);\nTHIS IS NOT SQL;")
    sys.path.insert(0, str(tmp_path))
    try:

        async def scenario() -> None:
            with pytest.raises(Exception, match="syntax error"):
                await db.open_db(tmp_path / "b.db", "bad_migrations")
            conn = await db.open_db(tmp_path / "b.db")
            tables = await (await conn.execute("SELECT name FROM sqlite_master WHERE name='t'")).fetchall()
            assert tables == []
            await conn.close()

        asyncio.run(scenario())
    finally:
        sys.path.remove(str(tmp_path))


async def test_write_together_commits_all_or_nothing(tmp_path: Path) -> None:
    """common.db.write_together (a zone's launch record: its spec and instances in one hop): a failing statement
    undoes the statements before it (left open, the next write's commit would have kept them)."""
    conn = await db.open_db(tmp_path / "w.db")
    try:
        await conn.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)")
        await conn.commit()
        await db.write_together(conn, [("INSERT INTO t VALUES (?)", [(1,), (2,)])])
        with pytest.raises(sqlite3.IntegrityError):
            await db.write_together(conn, [("INSERT INTO t VALUES (?)", [(3,)]), ("INSERT INTO t VALUES (?)", [(1,)])])
        await db.write_together(conn, [("INSERT INTO t VALUES (?)", [(4,)])])
        await conn.close()
        conn = await db.open_db(tmp_path / "w.db")  # what is on disk
        rows = await (await conn.execute("SELECT x FROM t ORDER BY x")).fetchall()
        assert [r[0] for r in rows] == [1, 2, 4]
    finally:
        await conn.close()


def test_replay_cache_is_bounded_and_forgets_old_nonces() -> None:
    cache = ReplayCache(window=300, capacity=1000)
    assert cache.check_and_add("a", now=0)
    assert not cache.check_and_add("a", now=1)
    for n in range(5000):
        cache.check_and_add(f"n{n}", now=2)
    assert len(cache) <= 1000
    assert cache.check_and_add("a", now=1000)  # long outside the window


def test_pki_command(tmp_path: Path) -> None:
    def koala(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli", "pki", *args], capture_output=True, text=True, timeout=60)

    assert koala("init", "--dir", str(tmp_path / "p")).returncode == 0
    again = koala("init", "--dir", str(tmp_path / "p"))
    assert again.returncode == 1 and "already holds a CA" in again.stderr
    assert koala("issue", "--dir", str(tmp_path / "p"), "--role", "cc", "--id", "cc-zone9").returncode == 0
    bad = koala("issue", "--dir", str(tmp_path / "p"), "--role", "cc", "--id", "../evil")
    assert bad.returncode == 1 and "invalid id" in bad.stderr
    shown = json.loads(koala("show", str(tmp_path / "p" / "cc-zone9.pem")).stdout)
    assert shown["id"] == "cc-zone9" and shown["role"] == "cc" and shown["key"] == "ecdsa-secp256r1"
    cloud = pki.load_cert(tmp_path / "p" / "cloud-cert.pem")
    assert pki.role_of(cloud) == "cloud" and cloud.public_key().key_size == 2048
    assert (tmp_path / "p" / "ca-key.pem").stat().st_mode & 0o077 == 0
    listing = json.loads(koala("show", str(tmp_path / "p")).stdout)
    assert {entry["id"] for entry in listing} >= {"Koala Cloud CA", "cloud", "cc-zone9"}


def test_backoff_grows_to_its_limit_and_resets() -> None:
    from common.backoff import Backoff

    backoff = Backoff(0.2, 1.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next_delay() == 0.2
    spread = Backoff(1.0, 1.0, jitter=True)
    delays = [spread.next_delay() for _ in range(200)]
    assert all(0.5 <= d < 1.5 for d in delays) and len(set(delays)) > 100


async def test_task_set_keeps_tasks_and_logs_failures(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from common.tasks import TaskSet

    tasks = TaskSet(logging.getLogger("test.tasks"), expected=(TimeoutError,))
    release = asyncio.Event()

    async def wait() -> None:
        await release.wait()

    async def fail(err: BaseException) -> None:
        raise err

    waiting = tasks.spawn(wait(), "waiter")
    tasks.spawn(fail(RuntimeError("boom")), "broken")
    tasks.spawn(fail(TimeoutError("slow peer")), "slow")
    with caplog.at_level(logging.INFO, logger="test.tasks"):
        for _ in range(5):
            await asyncio.sleep(0)
    assert list(tasks) == [waiting] and len(tasks) == 1  # ended tasks are let go, the running one is kept
    errors = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert ("ERROR", "task broken failed", True) in errors
    assert ("WARNING", "slow: slow peer", False) in errors
    release.set()
    await waiting
    assert len(tasks) == 0


async def test_read_bounded_refuses_announced_and_streamed_excess() -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from common.bodies import BodyTooLarge, read_bounded

    async def echo(request: web.Request) -> web.Response:
        try:
            return web.Response(body=await read_bounded(request, 10))
        except BodyTooLarge as err:
            return web.Response(status=413, text=str(err))

    app = web.Application()
    app.router.add_post("/", echo)
    async with TestClient(TestServer(app)) as client:
        assert await (await client.post("/", data=b"0123456789")).read() == b"0123456789"
        announced = await client.post("/", data=b"x" * 11)
        assert announced.status == 413 and "10 bytes" in await announced.text()

        async def stream():  # no Content-Length: chunked, refused once more than 10 bytes arrived
            for _ in range(4):
                yield b"abcd"

        streamed = await client.post("/", data=stream())
        assert streamed.status == 413


def test_pki_ensure_many_issues_each_id_its_own_certificate(tmp_path: Path) -> None:
    store = pki.PkiDir(tmp_path / "p")
    store.init()
    store.ensure("nc-a", "nc")
    before = (tmp_path / "p" / "nc-a.pem").read_bytes()
    store.ensure_many(["nc-a", "nc-b", "nc-c"], "nc")
    assert (tmp_path / "p" / "nc-a.pem").read_bytes() == before  # an existing one is kept
    ca = pki.load_cert(store.ca_path)
    keys = set()
    for node_id in ("nc-b", "nc-c"):
        cert = pki.load_cert(store.cert_path(node_id))
        assert pki.id_of(cert) == node_id and pki.role_of(cert) == "nc" and cert.issuer == ca.subject
        cert.verify_directly_issued_by(ca)
        assert store.key_path(node_id).stat().st_mode & 0o077 == 0
        keys.add(pki.load_key(store.key_path(node_id)).public_key().public_numbers())
    assert len(keys) == 2  # a key pair of its own each


def test_mount_table_decodes_the_kernels_escapes(tmp_path):
    table = tmp_path / "mounts"
    table.write_text("/dev/loop3 /var/lib/koala/vol\\040dir xfs rw 0 0\nbad\ntmpfs /a\\134b tmpfs rw 0 0\n")
    assert mount_table(table) == [Mount("/dev/loop3", "/var/lib/koala/vol dir"), Mount("tmpfs", "/a\\b")]
    assert mount_table(tmp_path / "missing") == []
    assert "/" in {mount.point for mount in mount_table()}  # this process's own table
