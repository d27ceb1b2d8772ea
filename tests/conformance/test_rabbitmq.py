"""The conformance kit against the RabbitMQ transport.

Runs against ``$RABBITMQ_URL`` when set, otherwise against the broker at
127.0.0.1:5672 in a vhost of its own (created and deleted with ``rabbitmqctl``).
Skipped when no broker is reachable.
"""

from __future__ import annotations

import pytest

from dotmac.events import EventBus, create_bus
from dotmac.events.testing import TransportConformance

pytest.importorskip("dotmac_events_rabbitmq")

from dotmac_events_rabbitmq.testing import url_fixture  # noqa: E402

rabbitmq_url = url_fixture("module")


class TestRabbitMQConformance(TransportConformance):
    timeout = 20.0
    groups_held_events = "handed_out"  # AMQP counts ready messages only

    @pytest.fixture(autouse=True)
    def _target(self, rabbitmq_url: str) -> None:
        self.url = rabbitmq_url

    def create_bus(self) -> EventBus:
        return create_bus(self.url)
