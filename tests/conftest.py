import pytest
import uvloop

from tests.lab import Lab, require_netns


def pytest_asyncio_loop_factories(config, item):
    """The daemon runs on uvloop; so do the async tests."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
def lab(tmp_path):
    """Namespaces and processes for one test, removed afterwards whatever happens."""
    require_netns("ping")
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.cleanup()
