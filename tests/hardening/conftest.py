from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import Cloud


@pytest.fixture(scope="module")
def module_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """All four services, shared by a module's tests (which restart services as they need)."""
    cloud = Cloud(tmp_path_factory.mktemp("hardening") / "cloud")
    try:
        cloud.start()
        yield cloud
    finally:
        cloud.stop()
