"""Lifecycle days as AWS counts them: an action N days after a moment is due at the first midnight UTC at or after
that moment plus N days. Checked on the rule's arithmetic with AWS's own example, and through a sweep over a real
embedded store with 86,400-second days and the sweep's clock set."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from services.walrus.lifecycle.rules import Rule, due, rules_to_json
from services.walrus.lifecycle.sweeper import DAY, LifecycleSweeper
from services.walrus.storage import Acl, EmbeddedBackend, ObjectSpec


def utc(*parts: int) -> float:
    return dt.datetime(*parts, tzinfo=dt.UTC).timestamp()


def test_days_round_up_to_the_next_midnight_utc() -> None:
    # AWS's example: created 2014-01-15 10:30 UTC, 3 days -> 2014-01-19 00:00 UTC
    assert due(utc(2014, 1, 15, 10, 30), 3, DAY) == utc(2014, 1, 19)
    assert due(utc(2014, 1, 15), 3, DAY) == utc(2014, 1, 18)  # already a midnight: no rounding
    rule = Rule("r", True, expiration_days=3, noncurrent_days=1, abort_days=2)
    created = utc(2014, 1, 15, 10, 30)
    assert not rule.current_expired(created, utc(2014, 1, 18, 23, 59, 59), DAY)
    assert rule.current_expired(created, utc(2014, 1, 19), DAY)
    assert not rule.noncurrent_expired(created, 0, utc(2014, 1, 16, 23), DAY)
    assert rule.noncurrent_expired(created, 0, utc(2014, 1, 17), DAY)
    assert not rule.upload_expired(created, utc(2014, 1, 17, 12), DAY)
    assert rule.upload_expired(created, utc(2014, 1, 18), DAY)


async def test_a_sweep_expires_at_midnight_utc(tmp_path: Path) -> None:
    storage = EmbeddedBackend(tmp_path / "objects", fsync=False)
    await storage.start()
    try:
        acl = Acl.private("111111111111", "alice")
        await storage.create_bucket("days", acl)
        data = await storage.new_data()
        await data.write(b"x")
        await data.finish()
        info = await storage.commit_object("days", "k", data, ObjectSpec("111111111111", "alice", acl))
        await storage.set_bucket_lifecycle("days", rules_to_json([Rule("one", True, expiration_days=1)]))
        sweeper = LifecycleSweeper(storage)
        midnight = due(info.last_modified, 1, DAY)
        assert midnight - info.last_modified >= DAY
        assert (await sweeper.sweep(now=midnight - 1))["expired"] == 0
        assert await storage.head_object("days", "k") is not None
        assert (await sweeper.sweep(now=midnight))["expired"] == 1
        assert await storage.head_object("days", "k") is None
    finally:
        await storage.close()
