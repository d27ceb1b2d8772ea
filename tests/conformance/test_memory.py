"""The conformance kit against the memory transport."""

from __future__ import annotations

import uuid

import pytest

from dotmac.events import EventBus, create_bus
from dotmac.events.testing import TransportConformance

pytest.importorskip("dotmac_events_memory")


class TestMemoryConformance(TransportConformance):
    timeout = 10.0
    idle_seconds = 0.5  # no broker poll or expiry window to outlast

    @pytest.fixture(autouse=True)
    def _broker_name(self) -> None:
        # One broker per test: buses of a test share it, tests never do.
        self.url = f"memory://conformance-{uuid.uuid4().hex[:8]}"

    def create_bus(self) -> EventBus:
        return create_bus(self.url)
