"""The NC's 5 s reconcile sweep over an idle node costs next to nothing per instance: a running domain's XML is
fetched and its Koala tag parsed once per run of the domain (libvirt's test driver, the real Hypervisor), not at
every sweep; a new run of the domain (a new id) is read again."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from services.node_controller.domain import DiskSpec, DomainSpec, render
from services.node_controller.hypervisor import Hypervisor


def spec(tmp_path: Path, name: str) -> DomainSpec:
    return DomainSpec(
        name=name,
        uuid=str(uuid.uuid4()),
        memory_mb=128,
        vcpus=1,
        disks=[DiskSpec(tmp_path / "root.img", "root")],
        console_log=tmp_path / "console.log",
        owner_id="000000000001",
        bridge="br0",
        mac="d0:0d:0a:1b:2c:3d",
    )


def test_tags_are_parsed_once_per_run_of_a_domain(tmp_path: Path) -> None:
    async def scenario() -> None:
        hv = Hypervisor("test:///default", lambda *_: None)
        assert await hv.start()
        name = f"i-{uuid.uuid4().hex[:8]}"
        try:
            xml = render(spec(tmp_path, name), "test")
            await hv.create(xml)
            first = {d.name: d for d in await hv.domains()}[name]
            assert first.tag == {"id": name, "owner": "000000000001"}
            for _ in range(3):  # idle sweeps: the very same parsed tag, nothing read or parsed again
                again = {d.name: d for d in await hv.domains()}
                assert again[name].tag is first.tag and again[name].xml is first.xml
            untagged = [d for d in again.values() if d.tag is None]
            assert all(d.name != name for d in untagged)
            # A new run of the domain is a new libvirt id: its XML and tag are read afresh.
            assert await hv.destroy(name)
            assert name not in {d.name for d in await hv.domains()}
            await hv.create(xml)
            rerun = {d.name: d for d in await hv.domains()}[name]
            assert rerun.tag == first.tag and rerun.tag is not first.tag
        finally:
            await hv.destroy(name)
            await hv.close()

    asyncio.run(scenario())
