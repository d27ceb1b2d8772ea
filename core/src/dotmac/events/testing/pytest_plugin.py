"""pytest plugin of dotmac-events (loaded through the ``pytest11`` entry point).

Fixtures:

- ``dotmac_app``: override it in your ``conftest.py`` to return the :class:`~dotmac.events.App`
  under test.
- ``dotmac_client``: a started :class:`~dotmac.events.testing.TestApp` of ``dotmac_app``
  (an async fixture: needs pytest-asyncio, as async tests do).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ..app import App
    from .app import TestApp


@pytest.fixture
def dotmac_app() -> App:
    """The app under test: override this fixture in your conftest.py."""
    raise pytest.UsageError(
        "define a fixture named 'dotmac_app' that returns your dotmac.events App "
        "to use the 'dotmac_client' fixture"
    )


async def _client(dotmac_app: App) -> AsyncIterator[TestApp]:
    from .app import TestApp

    async with TestApp(dotmac_app) as client:
        yield client


def _async_fixture() -> Any:
    try:
        import pytest_asyncio
    except ImportError:  # without pytest-asyncio an async fixture cannot run at all
        return pytest.fixture
    return pytest_asyncio.fixture


dotmac_client = _async_fixture()(_client, name="dotmac_client")
