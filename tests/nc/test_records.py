"""Group commit of the NC's instance records: each save returns once its row is committed (read back from a
second connection), while a burst of saves shares a few transactions."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from common.db import open_db
from services.node_controller.records import InstanceRecords


def _row(instance_id: str, state: str, detail: str) -> tuple:
    return (instance_id, "{}", state, detail, "", 1.0, 2.0, None, "[]")


def test_a_burst_shares_transactions_and_each_save_is_committed(tmp_path: Path) -> None:
    path = tmp_path / "nc.db"

    def committed(instance_id: str) -> tuple | None:
        with sqlite3.connect(path) as other:  # another connection sees only committed rows
            return other.execute("SELECT state, detail FROM instances WHERE instance_id = ?", (instance_id,)).fetchone()

    async def main() -> int:
        db = await open_db(path, "services.node_controller.migrations")
        records = InstanceRecords(db)

        async def launch(n: int) -> None:
            instance_id = f"i-{n:08x}"
            for detail in ("staging", "booting"):
                await records.save(_row(instance_id, "Pending", detail))
                assert committed(instance_id) == ("Pending", detail)  # written before it is acted on
            await records.save(_row(instance_id, "Extant", "running"))
            assert committed(instance_id) == ("Extant", "running")

        await asyncio.gather(*(launch(n) for n in range(200)))
        await db.close()
        return records.transactions

    transactions = asyncio.run(main())
    assert transactions < 200  # 600 saves; one commit each before
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM instances WHERE state = 'Extant'").fetchone() == (200,)
