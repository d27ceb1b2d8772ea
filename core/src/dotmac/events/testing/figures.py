"""Figures of fault tests (events lost, duplicates, restarts…), printed at the end of the run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .pytest_plugin import record_figures

__all__ = ["FaultFigures"]


class FaultFigures:
    """A test suite's figures: a ``report`` fixture that records them under ``title``.

    In a ``conftest.py``::

        report = FaultFigures("redis fault-test figures").fixture()

    A test calls ``report("free text", lost=0, duplicates=3)``. The line is printed in
    a section named ``title`` at the end of the run (visible with -q, and under
    pytest-xdist too: the lines travel in the test reports, see
    :func:`~dotmac.events.testing.pytest_plugin.record_figures`); the keyword figures
    are also recorded as JUnit properties.
    """

    def __init__(self, title: str) -> None:
        self.title = title

    def fixture(self) -> Any:
        """The ``report`` fixture."""
        title = self.title

        @pytest.fixture(name="report")
        def report(
            request: pytest.FixtureRequest, record_property: Callable[[str, object], None]
        ) -> Callable[..., None]:
            def add(*text: str, **figures: Any) -> None:
                line = ", ".join([*text, *(f"{k}={v}" for k, v in figures.items())])
                record_figures(request.node, title, line)
                for key, value in figures.items():
                    record_property(key, value)
                print(f"\n[{request.node.name}] {line}")

            return add

        return report
