"""Figures of fault tests (events lost, duplicates, restarts…), printed at the end of the run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

__all__ = ["FaultFigures"]


class FaultFigures:
    """A test suite's figures: a ``report`` fixture to record them and a
    ``pytest_terminal_summary`` hook that prints them under ``title`` (visible with -q).

    In a ``conftest.py``::

        figures = FaultFigures("redis fault-test figures")
        report = figures.fixture()
        pytest_terminal_summary = figures.terminal_summary()

    A test calls ``report("free text", lost=0, duplicates=3)``: the line is printed in
    the summary, the keyword figures are also recorded as JUnit properties.
    """

    def __init__(self, title: str) -> None:
        self.title = title
        self.lines: list[str] = []

    def fixture(self) -> Any:
        """The ``report`` fixture."""
        lines = self.lines

        @pytest.fixture(name="report")
        def report(
            request: pytest.FixtureRequest, record_property: Callable[[str, object], None]
        ) -> Callable[..., None]:
            def add(*text: str, **figures: Any) -> None:
                line = ", ".join([*text, *(f"{k}={v}" for k, v in figures.items())])
                lines.append(f"{request.node.name}: {line}")
                for key, value in figures.items():
                    record_property(key, value)
                print(f"\n[{request.node.name}] {line}")

            return add

        return report

    def terminal_summary(self) -> Callable[[Any], None]:
        """The ``pytest_terminal_summary`` hook."""

        def pytest_terminal_summary(terminalreporter: Any) -> None:
            if self.lines:
                terminalreporter.section(self.title)
                for line in self.lines:
                    terminalreporter.write_line(line)

        return pytest_terminal_summary
