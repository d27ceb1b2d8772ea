from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from dotmac.events import EventBus, create_bus
from dotmac.events.testing import TransportConformance

HOST, PORT = "localhost", 1234


@pytest.fixture(scope="module", autouse=True)
def _broker_up() -> Iterator[None]:
    # Skip cleanly when no broker listens; once one does, every kit failure is real.
    try:
        socket.create_connection((HOST, PORT), timeout=2).close()
    except OSError as exc:
        pytest.skip(f"no broker listens at {HOST}:{PORT} ({exc}); start one to run the kit")
    yield


class TestTemplateConformance(TransportConformance):
    def create_bus(self) -> EventBus:
        return create_bus(f"template://{HOST}:{PORT}")
