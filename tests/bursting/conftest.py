import pytest

from tests.bursting.support import World


@pytest.fixture(scope="package")
def world(tmp_path_factory):
    instance = World(tmp_path_factory.mktemp("burst"))
    try:
        yield instance
    finally:
        instance.stop()
