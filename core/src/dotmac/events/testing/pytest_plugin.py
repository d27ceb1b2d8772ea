"""pytest plugin of dotmac-events (loaded through the ``pytest11`` entry point).

Fixtures:

- ``dotmac_app``: override it in your ``conftest.py`` to return the :class:`~dotmac.events.App`
  under test.
- ``dotmac_client``: a started :class:`~dotmac.events.testing.TestApp` of ``dotmac_app``
  (an async fixture: needs pytest-asyncio, as async tests do).

Fault-test figures: :func:`record_figures` attaches a line of figures to the running
test; the lines are printed in sections at the end of the run. They travel in the test
reports, so they are printed with pytest-xdist too (a worker's own terminal summary is
never shown).
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

FIGURES_PROPERTY = "dotmac-events figures"


def record_figures(item: pytest.Item, section: str, line: str) -> None:
    """Print ``"<test name>: <line>"`` under the heading ``section`` at the end of the run."""
    item.user_properties.append((FIGURES_PROPERTY, (section, f"{item.name}: {line}")))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    sections: dict[str, list[str]] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "call":
                continue
            for name, value in getattr(report, "user_properties", ()):
                if name == FIGURES_PROPERTY:
                    section, line = value
                    sections.setdefault(section, []).append(line)
    for section, lines in sections.items():
        terminalreporter.section(section)
        for line in lines:
            terminalreporter.write_line(line)
