from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Cloud


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    """All four services running, each reporting its peers."""
    instance = Cloud(tmp_path / "cloud")
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()
