"""The suite by level, one folder and one marker each (`scripts/test -m unit`):

    unit/   pure pieces: tables and properties, no I/O, no clock (seconds)
    pairs/  two cores over the in-memory network on a fake clock, asserting on events
    host/   real sockets, devices and processes on this host (loopback; some need root)
    netns/  network namespaces, real daemons and peers, systemd (needs root)
"""

from pathlib import Path

import pytest
import uvloop

from tests.lab import Lab, require_netns

LEVELS = ("unit", "pairs", "host", "netns")
HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    """Each test is marked with its folder's level."""
    for item in items:
        level = Path(item.fspath).relative_to(HERE).parts[0]
        if level not in LEVELS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in one of tests/{{{','.join(LEVELS)}}}/")
        item.add_marker(getattr(pytest.mark, level))


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
