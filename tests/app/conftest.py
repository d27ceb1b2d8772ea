"""Fixtures of the app-runner tests: figures of the fault tests in the terminal summary."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

_FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[..., None]:
    def emit(**figures: Any) -> None:
        line = ", ".join(f"{k}={v}" for k, v in figures.items())
        request.config.stash.setdefault(_FIGURES, []).append(f"{request.node.name}: {line}")

    return emit


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    lines = config.stash.get(_FIGURES, [])
    if lines:
        terminalreporter.section("app runner fault-test figures")
        for line in lines:
            terminalreporter.write_line(line)
