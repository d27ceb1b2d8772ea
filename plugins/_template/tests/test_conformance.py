from __future__ import annotations

from dotmac.events import EventBus, create_bus
from dotmac.events.testing import TransportConformance


class TestTemplateConformance(TransportConformance):
    def create_bus(self) -> EventBus:
        return create_bus("template://localhost:1234")
