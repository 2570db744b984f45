"""Restart safety on the test driver: records before domains, adoption, resumed staging, look-alikes reported.

libvirt's test driver keeps its state per connection, so a restarted NC would see an empty hypervisor. The NC
connects to test:///<node.xml> instead, a node description the test driver loads at every connection: after
killing the NC, the test writes into it the domains that "kept running" meanwhile (the libvirt.xml the NC
saved for them), as a real hypervisor would have kept them, and the restarted NC's connection finds them.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from services.node_controller.domain import DiskSpec, DomainSpec, render
from tests.nc.conftest import FOREIGN, NcEnv, close_env, make_env
from tests.nc.support import node_file
from tests.waiting import wait_for


@pytest.fixture
def env(tmp_path: Path):
    instance = make_env(tmp_path, {"INSTANCE_TIMEOUT": 60})
    try:
        yield instance
    finally:
        close_env(instance)


def look_alike(tmp_path: Path) -> str:
    """A domain tagged as a Koala instance that this NC has no record of (e.g. another NC's, or a stale one)."""
    spec = DomainSpec("i-0badf00d", "0e2a4c1d-8d6e-4b0f-9f3e-2b8a1c5d7e9f", 128, 1,
                      [DiskSpec(tmp_path / "x.img", "root")], tmp_path / "x.log", owner_id="000000000007")  # fmt: skip
    return render(spec, "test")


def test_restart_adopts_resumes_and_reports(env: NcEnv, tmp_path: Path) -> None:
    manifest = env.image("adopt")
    for instance_id in ("i-a0000001", "i-a0000002", "i-a0000003"):
        env.run(instance_id, image="emi-000000a1", manifest=manifest)
    for instance_id in ("i-a0000001", "i-a0000002", "i-a0000003"):
        env.wait_state(instance_id, "Extant")
    slow = env.image("adopt-slow")
    env.images.delay = 30.0
    env.run("i-a0000004", image="emi-000000a2", manifest=slow)  # stays in staging
    wait_for(lambda: slow in env.images.arrived, 10, what="the slow image asked for")
    env.cloud.kill("nc")  # SIGKILL: no chance to tidy up

    # The hypervisor kept i-a0000001 and i-a0000002 running; i-a0000003 died while the NC was down.
    kept = [(env.instance_dir(i) / "libvirt.xml").read_text() for i in ("i-a0000001", "i-a0000002")]
    node_file(env.node_xml, [*kept, look_alike(tmp_path), FOREIGN])
    env.images.delay = 0.0
    pushes_before = len(env.recorder.pushes)
    env.cloud.start("nc")

    found = env.describe()
    assert found["i-a0000001"].state == "Extant" and found["i-a0000002"].state == "Extant"
    assert found["i-a0000003"].state == "Teardown" and "gone" in found["i-a0000003"].reason
    assert not env.instance_dir("i-a0000003").exists()
    assert env.wait_state("i-a0000004", "Extant").detail == "running"  # staging resumed from scratch
    resources = env.resources()
    assert resources.instances == 3
    assert {"i-0badf00d", "i-deadbeef"} <= set(resources.unknown_domains)
    # The restarted NC told the CC its complete list.
    wait_for(lambda: any(p.full for p in env.recorder.pushes[pushes_before:]), 10, what="full push")
    full = next(p for p in env.recorder.pushes[pushes_before:] if p.full)
    assert {"i-a0000001", "i-a0000002", "i-a0000003"} <= {i.instance_id for i in full.instances}
    # Adopted instances still hold their cached image; terminating them works as usual.
    assert list((env.instance_path / ".cache" / "emi-000000a1").glob("*.img"))
    for instance_id in ("i-a0000001", "i-a0000002", "i-a0000004"):
        assert env.terminate(instance_id).state == "Teardown"
        assert not env.instance_dir(instance_id).exists()
    env.wait_sweeps()  # the look-alikes are still there and still only reported
    assert {"i-0badf00d", "i-deadbeef"} <= set(env.resources().unknown_domains)
    assert "reported, not destroyed" in env.cloud.log("nc")


def test_orphan_directories_are_reported_not_removed(env: NcEnv) -> None:
    orphan = env.instance_path / "000000000009" / "i-0f0f0f0f"
    orphan.mkdir(parents=True)
    (orphan / "root.qcow2").write_bytes(b"x")
    env.cloud.stop("nc")
    env.cloud.start("nc")
    assert (orphan / "root.qcow2").exists()
    assert "i-0f0f0f0f has no record" in env.cloud.log("nc")


def test_a_teardown_cut_short_by_a_kill_is_finished_at_restart(env: NcEnv) -> None:
    manifest = env.image("cut-short")
    for instance_id in ("i-c0000001", "i-c0000002"):
        env.run(instance_id, image="emi-000000c1", manifest=manifest)
        env.wait_state(instance_id, "Extant")
    env.cloud.kill("nc")
    # Where a kill -9 inside _teardown leaves things: Teardown written, the domain destroyed, the files still there.
    kept = (env.instance_dir("i-c0000002") / "libvirt.xml").read_text()
    node_file(env.node_xml, [kept, FOREIGN])
    with sqlite3.connect(env.cloud.dir / "data" / "nc-node1" / "nc.db") as db:
        db.execute(
            "UPDATE instances SET state = 'Teardown', detail = 'terminated', teardown_at = ? WHERE instance_id = ?",
            (time.time(), "i-c0000001"),
        )
    assert env.instance_dir("i-c0000001").exists()
    env.cloud.start("nc")
    assert env.describe()["i-c0000001"].state == "Teardown"
    assert not env.instance_dir("i-c0000001").exists()
    assert "has no record" not in env.cloud.log("nc")
    assert env.terminate("i-c0000002").state == "Teardown"
