from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from dotmac.events.plugins import reset_plugins
from dotmac.events.retry import set_testing


@pytest.fixture(autouse=True, scope="module")
def _only_memory_plugin() -> Iterator[None]:
    # Core tests describe the core: other installed plugins (observers) stay out.
    # Module scope, not session: a session fixture is torn down only when the whole
    # run ends, so the plugins' tests run in the same process after these would find
    # the registry still limited to memory (test_plugins.py checks this).
    mp = pytest.MonkeyPatch()
    mp.setenv("DOTMAC_EVENTS_LOAD_PLUGINS", "memory")
    reset_plugins()
    yield
    mp.undo()
    reset_plugins()


@pytest.fixture(autouse=True)
def _no_backoff() -> Iterator[None]:
    set_testing(True)
    yield
    set_testing(False)


@pytest.fixture
def memory_url() -> str:
    pytest.importorskip("dotmac_events_memory")
    return f"memory://core-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def fresh_plugins() -> Iterator[None]:
    """Rebuild the plugin manager before and after a test that changes the environment."""
    reset_plugins()
    yield
    reset_plugins()
