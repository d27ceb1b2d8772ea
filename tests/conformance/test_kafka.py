"""The conformance kit against the Kafka transport on Tansu (or on
$KAFKA_BOOTSTRAP_SERVERS); ``test_kafka_noida.py`` runs it on noida-db, in a module of
its own so that pytest-xdist runs the two brokers on different workers."""

from __future__ import annotations

import pytest

pytest.importorskip("dotmac_events_kafka")
pytest.importorskip("aiokafka")

from dotmac_events_kafka.testing import KafkaConformance  # noqa: E402


class TestKafkaConformance(KafkaConformance):
    broker = "tansu"
