"""The short durability and convergence run for CI (the long one is bench/durability_bench.py): kill -9 loops over
S3 writes and over launches; nothing acknowledged is lost or corrupted, nothing is left behind, and the cloud
converges once the killing stops."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clc.compute_cloud import bundle_and_upload
from tests.hardening.durability import ec2_client, launches_under_kills, s3_under_kills
from tests.harness import Cloud


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    instance = Cloud(tmp_path_factory.mktemp("durability") / "cloud")
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()


def test_s3_writes_survive_kills(cloud: Cloud) -> None:
    figures = s3_under_kills(cloud, seconds=8, every=2.5, min_kills=2)
    assert figures.kills >= 2 and figures.acknowledged > 20, figures
    assert (figures.lost, figures.corrupted, figures.leaked) == (0, 0, 0), figures.problems


def test_launches_converge_after_kills(cloud: Cloud, tmp_path: Path) -> None:
    location = bundle_and_upload(cloud, tmp_path / "bundle", "machine", "durability")
    image = ec2_client(cloud).register_image(ImageLocation=location, Name="durability")["ImageId"]
    figures = launches_under_kills(cloud, image, seconds=12, every=2, min_kills=3)
    assert figures.kills >= 3 and figures.acknowledged > 0, figures
    assert (figures.lost, figures.leaked) == (0, 0), figures.problems
