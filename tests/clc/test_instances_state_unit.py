"""Instance state from the CCs' reports, on the compute engine alone (its real database, no CC needed):
pending -> running -> terminated, never backwards, the lost-instance timeout and burying terminated ones."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict

from common.messages.cc_nc import NetConfig
from common.messages.clc_cc import ClusterInstance
from services.cloud_controller.compute.cc_client import ClusterClient
from services.cloud_controller.compute.engine import Compute, Settings
from services.cloud_controller.compute.store import Instance, Reservation
from services.cloud_controller.database import open_clc_database


def report(instance_id: str, state: str, ip: str = "") -> ClusterInstance:
    return ClusterInstance(instance_id=instance_id, state=state, node_id="nc-1", net=NetConfig(private_ip=ip))


async def engine(tmp_path, **settings) -> Compute:
    db = await open_clc_database(tmp_path)
    compute = Compute(db, ClusterClient(None, {"z1": "http://127.0.0.1:9"}), Settings(**settings))  # type: ignore[arg-type]
    await compute.load()
    return compute


async def launch(compute: Compute, count: int, owner: str = "111111111111") -> list[Instance]:
    now = time.time()
    reservation = Reservation(f"r-{len(compute.store.reservations):08x}", owner, "z1", created_at=now)
    instances = [
        Instance(
            instance_id=f"i-{len(compute.store.instances) + n:08x}",
            reservation_id=reservation.reservation_id,
            owner_id=owner,
            image_id="emi-00000001",
            vm_type="m1.small",
            cores=1,
            memory_mb=128,
            disk_gb=2,
            zone="z1",
            state="pending",
            launch_time=now,
            updated_at=now,
            launch_index=n,
        )
        for n in range(count)
    ]
    compute.store.add_reservation(reservation, instances)
    await compute.store.save_reservation(reservation)
    return instances


def test_reports_drive_states_and_persist(tmp_path) -> None:
    async def scenario() -> None:
        compute = await engine(tmp_path)
        a, b = await launch(compute, 2)
        await compute.reports.apply_report("z1", [report(a.instance_id, "Extant", "10.0.0.5")], full=False)
        assert a.state == "running" and a.private_ip == "10.0.0.5" and a.node_id == "nc-1"
        assert compute.store.by_private_ip["10.0.0.5"] == a.instance_id
        assert b.state == "pending"
        # An old Pending report never takes it back; Teardown ends it and frees its address for metadata.
        await compute.reports.apply_report("z1", [report(a.instance_id, "Pending")], full=False)
        assert a.state == "running"
        await compute.reports.apply_report("z1", [report(a.instance_id, "Teardown")], full=False)
        assert a.state == "terminated" and "10.0.0.5" not in compute.store.by_private_ip
        # Another zone's report does not touch this zone's instances.
        await compute.reports.apply_report("z2", [report(b.instance_id, "Extant")], full=False)
        assert b.state == "pending"
        # What was written is what a restart finds: every field as in memory (reports write only what they change).
        public = ClusterInstance(
            instance_id=b.instance_id,
            state="Extant",
            node_id="nc-2",
            net=NetConfig(private_ip="10.0.0.6", public_ip="192.0.2.9"),
        )
        await compute.reports.apply_report("z1", [public], full=False)
        assert (b.state, b.node_id, b.public_ip) == ("running", "nc-2", "192.0.2.9")
        again = await engine(tmp_path)
        assert again.store.instances[a.instance_id].state == "terminated"
        assert again.store.instances[a.instance_id].private_ip == "10.0.0.5"
        for instance in (a, b):
            assert asdict(again.store.instances[instance.instance_id]) == asdict(instance)
        await compute.db.close()
        await again.db.close()

    asyncio.run(scenario())


def test_unreported_instance_is_terminated_only_after_the_timeout(tmp_path) -> None:
    async def scenario() -> None:
        compute = await engine(tmp_path, lost_after=60.0, terminated_visible=30.0)
        (a,) = await launch(compute, 1)
        await compute.reports.apply_report("z1", [report(a.instance_id, "Extant")], full=True)
        assert a.state == "running"
        await compute.reports.apply_report("z1", [], full=True)  # the CC stops reporting it
        assert a.state == "running"
        a.last_seen = a.launch_time = time.time() - 61
        await compute.reports.apply_report("z1", [], full=True)
        assert a.state == "terminated" and a.state_reason.startswith("Server.")
        # A shutting-down instance that disappears is simply gone.
        (b,) = await launch(compute, 1)
        compute.store.set_state(b, "shutting-down", "User initiated")
        await compute.reports.apply_report("z1", [], full=True)
        assert b.state == "terminated" and b.state_reason == "User initiated"
        # Terminated instances stay visible, then are buried with their reservations.
        await compute.poller.housekeeping()
        assert a.instance_id in compute.store.instances
        a.terminated_at = time.time() - 31
        forgotten: list[str] = []

        async def listener(ids: list[str]) -> None:
            forgotten.extend(ids)

        compute.on_forget.append(listener)  # e.g. their tags go too
        await compute.poller.housekeeping()
        assert forgotten == [a.instance_id]
        assert a.instance_id not in compute.store.instances
        assert a.reservation_id not in compute.store.reservations
        assert b.instance_id in compute.store.instances
        await compute.db.close()

    asyncio.run(scenario())


def test_notify_refuses_unknown_zone(tmp_path) -> None:
    async def scenario() -> None:
        compute = await engine(tmp_path)
        from common.messages.clc_cc import NotifyInstancesRequest
        from common.rpc import RpcError

        try:
            await compute.reports.notify(NotifyInstancesRequest(zone="elsewhere", instances=[]))
        except RpcError as err:
            assert err.status == 403
        else:
            raise AssertionError("a report for an unknown zone was accepted")
        await compute.db.close()

    asyncio.run(scenario())


def test_a_big_report_lets_requests_in_between(tmp_path) -> None:
    """A report of thousands (a poll's full list) is applied a chunk at a time: a request waiting meanwhile runs
    before the whole report is done, and sees each instance either as before or as after."""

    async def scenario() -> None:
        compute = await engine(tmp_path)
        try:
            instances = await launch(compute, 1200)
            seen_midway: list[int] = []

            async def request() -> None:
                seen_midway.append(sum(1 for i in instances if i.state == "running"))

            applying = asyncio.create_task(
                compute.reports.apply_report("z1", [report(i.instance_id, "Extant") for i in instances], full=True)
            )
            await asyncio.sleep(0)  # the report starts (and yields after its first chunk)
            await request()
            await applying
            assert seen_midway and 0 < seen_midway[0] < 1200
            assert {i.state for i in instances} == {"running"}
        finally:
            await compute.db.close()

    asyncio.run(scenario())


def test_concurrent_reservations_share_one_transaction(tmp_path) -> None:
    """RunInstances requests arriving together write their reservations in one transaction (group commit); one
    that cannot be written (here a reservation id already taken) fails alone, the others are written."""

    async def scenario() -> None:
        compute = await engine(tmp_path)
        taken = (await launch(compute, 1))[0].reservation_id
        now = time.time()
        reservations = [Reservation(f"r-{0x100 + n:08x}", "111111111111", "z1", created_at=now) for n in range(20)]
        reservations[7] = Reservation(taken, "111111111111", "z1", created_at=now)
        for n, reservation in enumerate(reservations):
            instance = Instance(
                instance_id=f"i-{0x100 + n:08x}", reservation_id=reservation.reservation_id, owner_id="111111111111",
                image_id="emi-00000001", vm_type="m1.small", cores=1, memory_mb=128, disk_gb=2, zone="z1",
                state="pending", launch_time=now, updated_at=now,
            )  # fmt: skip
            reservation.instance_ids.append(instance.instance_id)
            compute.store.instances[instance.instance_id] = instance
        transactions = 0
        real = compute.db.write

        async def counted(statements):  # the real transaction (one Database.write), counted
            nonlocal transactions
            transactions += 1
            await real(statements)

        compute.db.write = counted  # type: ignore[method-assign]
        results = await asyncio.gather(
            *(compute.store.save_reservation(r) for r in reservations), return_exceptions=True
        )
        compute.db.write = real  # type: ignore[method-assign]
        failed = [n for n, result in enumerate(results) if isinstance(result, Exception)]
        assert failed == [7]
        assert transactions == 1 + len(reservations)  # the batch, undone, then each alone (one is at fault)
        # Without a faulty one: all twenty in one transaction.
        more = [Reservation(f"r-{0x200 + n:08x}", "111111111111", "z1", created_at=now) for n in range(20)]
        transactions = 0
        compute.db.write = counted  # type: ignore[method-assign]
        await asyncio.gather(*(compute.store.save_reservation(r) for r in more))
        compute.db.write = real  # type: ignore[method-assign]
        assert transactions == 1
        again = await engine(tmp_path)
        written = {r.reservation_id for r in [*reservations, *more]} - {taken}
        assert written <= set(again.store.reservations)
        assert {f"i-{0x100 + n:08x}" for n in range(20) if n != 7} <= set(again.store.instances)
        assert f"i-{0x107:08x}" not in again.store.instances
        await compute.db.close()
        await again.db.close()

    asyncio.run(scenario())
