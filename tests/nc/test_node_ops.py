"""StartNetwork, PowerDown, and forgetting Teardown records, on the test driver."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.messages.cc_nc import Ack, StartNetworkRequest
from common.rpc import Empty, RpcError
from tests.nc.conftest import NcEnv, close_env, make_env
from tests.waiting import wait_for


@pytest.fixture
def env(tmp_path: Path):
    instance = make_env(tmp_path, {"KOALA_NC_FORGET_SECONDS": 1})
    try:
        yield instance
    finally:
        close_env(instance)


def test_start_network_validates_the_bridge(env: NcEnv) -> None:
    assert env.cc.call(env.url, "StartNetwork", StartNetworkRequest(bridge="eucabr10", vlan=10), Ack).ok
    assert not Path("/sys/class/net/eucabr10").exists()  # the test hypervisor touches nothing on the host
    with pytest.raises(RpcError) as err:
        env.cc.call(env.url, "StartNetwork", StartNetworkRequest(bridge="br0; reboot"), Ack)
    assert err.value.status == 400 and err.value.code == "NetworkError"


def test_teardown_records_are_forgotten(env: NcEnv) -> None:
    manifest = env.image("forget")
    env.run("i-f0000001", image="emi-000000f1", manifest=manifest)
    env.wait_state("i-f0000001", "Extant")
    env.terminate("i-f0000001")
    wait_for(lambda: "i-f0000001" not in env.describe(), 10, 0.1, "the record forgotten")


def test_power_down_only_when_idle(env: NcEnv) -> None:
    manifest = env.image("power")
    env.run("i-f0000002", image="emi-000000f2", manifest=manifest)
    env.wait_state("i-f0000002", "Extant")
    with pytest.raises(RpcError) as err:
        env.cc.call(env.url, "PowerDown", Empty(), Ack)
    assert err.value.code == "NodeBusy"
    env.terminate("i-f0000002")
    # No power-off command configured (a simulated host): acknowledged, and the node keeps serving.
    assert env.cc.call(env.url, "PowerDown", Empty(), Ack).ok
    assert env.resources().node_status == "enabled"


def test_power_down_runs_the_command(tmp_path: Path) -> None:
    marker = tmp_path / "powered-off"
    env = make_env(tmp_path / "power", {"KOALA_NC_POWEROFF_COMMAND": f"touch {marker}"})
    try:
        assert env.cc.call(env.url, "PowerDown", Empty(), Ack).ok
        assert env.resources().node_status == "disabled"
        with pytest.raises(RpcError) as err:
            env.run("i-f0000003", image="emi-000000f2", manifest=env.image("power2"))
        assert err.value.code == "NodePoweredDown"
        wait_for(marker.exists, 10, 0.05, "the power-off command")
    finally:
        close_env(env)


def test_image_cache_is_lru_and_keeps_images_in_use(tmp_path: Path) -> None:
    env = make_env(tmp_path / "lru", {"NC_CACHE_SIZE": 3})  # room for three 1 MiB images
    try:
        cache = env.instance_path / ".cache"
        manifests = {name: env.image(f"lru-{name}") for name in ("a", "b", "c", "d", "e")}

        def launch(instance_id: str, name: str, keep: bool = False) -> None:
            env.run(instance_id, image=f"emi-0000100{ord(name) - 96}", manifest=manifests[name])
            env.wait_state(instance_id, "Extant")
            if not keep:
                env.terminate(instance_id)

        def cached() -> set[str]:
            return {p.name for p in cache.iterdir() if any(p.glob("*.img"))}

        launch("i-e0000001", "a", keep=True)  # a stays in use
        launch("i-e0000002", "b")
        launch("i-e0000003", "c")
        launch("i-e0000004", "b")  # b used again: c is now the least recently used unpinned image
        launch("i-e0000005", "d")
        assert cached() == {"emi-00001001", "emi-00001002", "emi-00001004"}  # c evicted, a pinned, b recent
        launch("i-e0000006", "e")
        assert "emi-00001001" in cached() and "emi-00001005" in cached()  # a is in use: never evicted
        env.terminate("i-e0000001")
        assert env.images.downloads(manifests["b"]) == 1  # the second use of b was a hit
    finally:
        close_env(env)


def test_manual_cleanup_keeps_files(tmp_path: Path) -> None:
    env = make_env(tmp_path / "manual", {"MANUAL_INSTANCES_CLEANUP": "true"})
    try:
        env.run("i-e1000001", image="emi-0000e001", manifest=env.image("manual"))
        env.wait_state("i-e1000001", "Extant")
        env.terminate("i-e1000001")
        assert (env.instance_dir("i-e1000001") / "libvirt.xml").exists()
        assert env.resources().instances == 0
    finally:
        close_env(env)
