"""Testing helpers and the transport conformance kit.

``TransportConformance`` is a pytest contract suite: subclass it in a test module of
your transport and implement :meth:`TransportConformance.create_bus`::

    from dotmac.events import create_bus
    from dotmac.events.testing import TransportConformance

    class TestFooConformance(TransportConformance):
        def create_bus(self):
            return create_bus("foo://localhost")

Only pytest is needed; every test runs its scenario on a fresh event loop.

``ServerProcess`` is the base of the plugins' private-server launchers (free port,
start, wait until it answers, stop/kill/restart, temporary directory, log tail on
failure); ``FaultFigures`` prints fault tests' figures in pytest's summary.

``TestApp`` runs a service :class:`~dotmac.events.App` on a private ``memory://`` bus
for the service's own tests (see docs/services.md).
"""

from __future__ import annotations

import pytest

# Plain asserts in the kit report what was expected and what was seen.
pytest.register_assert_rewrite(
    "dotmac.events.testing.conformance",
    "dotmac.events.testing.contract",
    "dotmac.events.testing.hostile",
    "dotmac.events.testing.introspection",
)

from .app import TestApp  # noqa: E402
from .collect import Collector, wait_dead_letters, wait_for, wait_groups  # noqa: E402
from .conformance import TransportConformance  # noqa: E402
from .figures import FaultFigures  # noqa: E402
from .server import ServerProcess, free_port  # noqa: E402

__all__ = [
    "Collector",
    "FaultFigures",
    "ServerProcess",
    "TestApp",
    "TransportConformance",
    "free_port",
    "wait_dead_letters",
    "wait_for",
    "wait_groups",
]
