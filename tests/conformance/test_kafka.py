"""The conformance kit against the Kafka transport (Tansu, or $KAFKA_BOOTSTRAP_SERVERS)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dotmac.events import EventBus
from dotmac.events.testing import TransportConformance

pytest.importorskip("dotmac_events_kafka")
pytest.importorskip("aiokafka")

from dotmac_events_kafka import create_kafka_bus  # noqa: E402
from dotmac_events_kafka.testing import fast_config, kafka_bootstrap_servers  # noqa: E402


@pytest.fixture(scope="module")
def kafka_servers() -> Iterator[str]:
    with kafka_bootstrap_servers() as servers:
        yield servers


class TestKafkaConformance(TransportConformance):
    @pytest.fixture(autouse=True)
    def _servers(self, kafka_servers: str) -> None:
        self.servers = kafka_servers

    def create_bus(self) -> EventBus:
        # Low group timings: on Tansu a join takes about session_timeout_ms / 2.
        return create_kafka_bus(fast_config(self.servers))
