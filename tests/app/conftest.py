"""Fixtures of the app-runner tests: figures of the fault tests in the terminal summary."""

from __future__ import annotations

from dotmac.events.testing.figures import FaultFigures

_figures = FaultFigures("app runner fault-test figures")
report = _figures.fixture()
