"""Fixtures of the app-runner tests: figures of the fault tests in the terminal summary."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dotmac.events.testing.pytest_plugin import record_figures


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[..., None]:
    def emit(**figures: Any) -> None:
        line = ", ".join(f"{k}={v}" for k, v in figures.items())
        record_figures(request.node, "app runner fault-test figures", line)

    return emit
