"""The tag store's index of tagged resources (what lets DescribeInstances skip the database for untagged
instances) never hides a tag: on the real engine and database, tags written, deleted, forgotten and reloaded
after a restart read back exactly as the table holds them."""

from __future__ import annotations

import asyncio

from tests.clc.test_instances_state_unit import engine, launch

OWNER = "111111111111"


def test_tags_read_back_through_the_index(tmp_path) -> None:
    async def scenario() -> None:
        compute = await engine(tmp_path)
        try:
            a, b, c = (i.instance_id for i in await launch(compute, 3, owner=OWNER))
            assert await compute.tags.tags_for([a, b, c]) == {}
            await compute.tags.put(OWNER, [(a, "instance"), (b, "instance")], [("job", "batch")])
            assert await compute.tags.tags_for([a, b, c]) == {
                a: [{"Key": "job", "Value": "batch"}],
                b: [{"Key": "job", "Value": "batch"}],
            }
            # Deleting a tag leaves the id indexed (a superset), and the read shows the table: no tag.
            await compute.tags.delete(OWNER, [b], [("job", None)])
            assert await compute.tags.tags_for([b]) == {}
            # A tag written inside a transaction that fails is not in the table, whatever the index holds.
            try:
                async with compute.db.transaction() as conn:
                    await compute.tags.put_in(conn, OWNER, [(c, "instance")], [("k", "v")])
                    raise RuntimeError("rolled back")
            except RuntimeError:
                pass
            assert await compute.tags.tags_for([c]) == {}
            await compute.tags.put(OWNER, [(c, "instance")], [("k", "v")])
            # A restart loads the index from the table.
            again = await engine(tmp_path)
            try:
                assert await again.tags.tags_for([a, b, c]) == {
                    a: [{"Key": "job", "Value": "batch"}],
                    c: [{"Key": "k", "Value": "v"}],
                }
            finally:
                await again.db.close()
            # A forgotten resource's tags go, and a new tag on the same id (written later) is read again.
            await compute.tags.forget([a])
            assert await compute.tags.tags_for([a]) == {}
            await compute.tags.put(OWNER, [(a, "instance")], [("again", "1")])
            assert await compute.tags.tags_for([a]) == {a: [{"Key": "again", "Value": "1"}]}
        finally:
            await compute.db.close()

    asyncio.run(scenario())
