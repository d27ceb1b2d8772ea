"""The conformance kit against the RabbitMQ transport.

Runs against ``$RABBITMQ_URL`` when set, otherwise against the broker at
127.0.0.1:5672 in a vhost of its own (created and deleted with ``rabbitmqctl``).
Skipped when no broker is reachable.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from dotmac.events import EventBus, create_bus
from dotmac.events.testing import TransportConformance

pytest.importorskip("dotmac_events_rabbitmq")

from dotmac_events_rabbitmq.testing import TemporaryVhost, broker_reachable  # noqa: E402


@pytest.fixture(scope="module")
def rabbitmq_url() -> Iterator[str]:
    url = os.environ.get("RABBITMQ_URL")
    if url:
        yield url
        return
    if not broker_reachable("127.0.0.1", 5672):
        pytest.skip("no RabbitMQ at 127.0.0.1:5672 and RABBITMQ_URL is not set")
    try:
        vhost = TemporaryVhost().__enter__()
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot create a vhost with rabbitmqctl ({type(exc).__name__}); set RABBITMQ_URL")
    try:
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost.quoted}"
    finally:
        vhost.__exit__(None, None, None)


class TestRabbitMQConformance(TransportConformance):
    timeout = 20.0

    @pytest.fixture(autouse=True)
    def _target(self, rabbitmq_url: str) -> None:
        self.url = rabbitmq_url

    def create_bus(self) -> EventBus:
        return create_bus(self.url)
