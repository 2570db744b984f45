"""DescribeInstances answers one consistent snapshot: while the CC's reports move instances from pending to
running, an answer filtered on instance-state-name shows only instances in that state (the filter and the
rendering read the store in one synchronous stretch). The compute engine is the real one on its real database;
the reports go through its real apply_report, interleaved with the requests on one event loop."""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace

from services.cloud_controller.actions import Context
from services.cloud_controller.actions import instances as instance_actions
from services.cloud_controller.actions.instances import describe_instances
from tests.clc.test_instances_state_unit import engine, launch, report

OWNER = "111111111111"
PRINCIPAL = SimpleNamespace(account_id=OWNER, user_id="u-1", is_admin=False)
STATE = re.compile(r"<instanceId>(i-[0-9a-f]+)</instanceId>.*?<instanceState><code>\d+</code><name>(\w[\w-]*)</name>")


def rendered_states(answer: dict) -> dict[str, str]:
    states: dict[str, str] = {}
    for reservation in answer["Reservations"]:
        for fragment in reservation["Instances"]:
            found = STATE.search(str(fragment))
            assert found, fragment
            states[found.group(1)] = found.group(2)
    return states


def test_state_filter_and_rendering_agree_while_reports_arrive(tmp_path) -> None:
    async def scenario() -> None:
        compute = await engine(tmp_path)
        try:
            await check_snapshots(compute)
        finally:
            await compute.db.close()  # also when an assertion fails: its thread would keep the process alive

    asyncio.run(scenario())


async def check_snapshots(compute) -> None:
    instances = await launch(compute, 300, owner=OWNER)
    ids = [i.instance_id for i in instances]
    # Tags give each answer a database read, as in a real cloud.
    await compute.tags.put(OWNER, [(i, "instance") for i in ids], [("job", "batch")])
    clc = SimpleNamespace(compute=compute, db=compute.db)
    ctx = Context(clc=clc, principal=PRINCIPAL, request_id="r", version="")  # type: ignore[arg-type]

    async def reporter() -> None:
        for start in range(0, len(ids), 5):
            await compute.reports.apply_report("z1", [report(i, "Extant") for i in ids[start : start + 5]], full=False)

    task = asyncio.create_task(reporter())
    answers = 0
    try:
        while not task.done():
            for wanted in ("pending", "running"):
                params = {"Filters": [{"Name": "instance-state-name", "Values": [wanted]}]}
                states = rendered_states(await describe_instances(ctx, params))
                wrong = {i: s for i, s in states.items() if s != wanted}
                assert not wrong, f"filtered on {wanted}, rendered {wrong}"
                answers += 1
    finally:
        await task
    assert answers > 2
    assert rendered_states(await describe_instances(ctx, {})) == dict.fromkeys(ids, "running")
    pending = {"Filters": [{"Name": "instance-state-name", "Values": ["pending"]}]}
    assert rendered_states(await describe_instances(ctx, pending)) == {}


def test_changed_instances_are_serialized_ahead_of_the_next_describe(tmp_path) -> None:
    """The prerenderer serializes instances as a report changes them (before the report's next chunk, so a
    DescribeInstances between two chunks does not serialize them itself), and other changes in the background:
    the next DescribeInstances finds their XML ready (and still shows exactly what the store holds)."""

    async def scenario() -> None:
        compute = await engine(tmp_path)
        try:
            prerender = instance_actions.install_prerender(compute)
            instances = await launch(compute, 450, owner=OWNER)
            ids = [i.instance_id for i in instances]
            clc = SimpleNamespace(compute=compute, db=compute.db)
            ctx = Context(clc=clc, principal=PRINCIPAL, request_id="r", version="")  # type: ignore[arg-type]
            assert set(rendered_states(await describe_instances(ctx, {})).values()) == {"pending"}
            await compute.reports.apply_report("z1", [report(i, "Extant") for i in ids], full=False)
            assert all("<name>running</name>" in instance_actions._XML_CACHE[i][1] for i in ids)  # at once
            cached = {i: instance_actions._XML_CACHE[i][1] for i in ids}
            assert rendered_states(await describe_instances(ctx, {})) == dict.fromkeys(ids, "running")
            assert all(instance_actions._XML_CACHE[i][1] is cached[i] for i in ids)  # served, not serialized again
            # A change from elsewhere (here a termination's shutting-down) is serialized in the background.
            for instance in instances[:300]:
                compute.store.set_state(instance, "shutting-down", "User initiated")
            compute.changed(instances[:300])
            assert all("<name>running</name>" in instance_actions._XML_CACHE[i][1] for i in ids[:300])  # not yet
            for _ in range(100):  # the background task's turns (300 instances: two chunks)
                await asyncio.sleep(0)
                if not prerender.waiting:
                    break
            await asyncio.sleep(0)
            assert all("<name>shutting-down</name>" in instance_actions._XML_CACHE[i][1] for i in ids[:300])
            cached = {i: instance_actions._XML_CACHE[i][1] for i in ids}
            expected = dict.fromkeys(ids[:300], "shutting-down") | dict.fromkeys(ids[300:], "running")
            assert rendered_states(await describe_instances(ctx, {})) == expected
            assert all(instance_actions._XML_CACHE[i][1] is cached[i] for i in ids)
            # Buried instances (terminated long enough ago) leave the cache with their records.
            for listener in compute.on_forget:
                await listener(ids[:10])
            cache = instance_actions._XML_CACHE
            assert not any(i in cache for i in ids[:10]) and ids[10] in cache
        finally:
            await compute.stop()
            await compute.db.close()

    asyncio.run(scenario())
