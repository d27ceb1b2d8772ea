"""The conformance kit against the Kafka transport on Tansu (or on
$KAFKA_BOOTSTRAP_SERVERS); ``test_kafka_noida.py`` runs it on noida-db, in a module of
its own so that pytest-xdist runs the two brokers on different workers."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from dotmac.events import EventBus
from dotmac.events.testing import TransportConformance

pytest.importorskip("dotmac_events_kafka")
pytest.importorskip("aiokafka")

from dotmac_events_kafka import create_kafka_bus  # noqa: E402
from dotmac_events_kafka.testing import (  # noqa: E402
    ENV_BOOTSTRAP,
    broker_kinds_under_test,
    fast_config,
    kafka_bootstrap_servers,
)


@pytest.fixture(
    scope="module",
    params=["external"]
    if os.environ.get(ENV_BOOTSTRAP)
    else [k for k in broker_kinds_under_test() if k == "tansu"],
)
def kafka_servers(request: pytest.FixtureRequest) -> Iterator[str]:
    with kafka_bootstrap_servers(request.param) as servers:
        yield servers


class TestKafkaConformance(TransportConformance):
    @pytest.fixture(autouse=True)
    def _servers(self, kafka_servers: str) -> None:
        self.servers = kafka_servers

    def create_bus(self) -> EventBus:
        # Low group timings, chosen for the broker (Tansu takes lower ones than Kafka allows).
        return create_kafka_bus(fast_config(self.servers))
