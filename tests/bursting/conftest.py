import pytest

from tests.bursting.support import World


@pytest.fixture(scope="package")
def world(tmp_path_factory):
    instance = World(tmp_path_factory.mktemp("burst"))
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(autouse=True)
def remote_answers_again(request):
    """Whatever a test did to the remote's answers, the next one starts with a remote that answers."""
    yield
    if "world" in request.fixturenames:
        request.getfixturevalue("world").proxy.release()
