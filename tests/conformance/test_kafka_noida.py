"""The conformance kit against the Kafka transport on noida-db (``test_kafka.py`` runs
it on Tansu, or on $KAFKA_BOOTSTRAP_SERVERS; this module then has nothing to run)."""

from __future__ import annotations

import pytest

pytest.importorskip("dotmac_events_kafka")
pytest.importorskip("aiokafka")

from dotmac_events_kafka.testing import KafkaConformance  # noqa: E402


class TestKafkaNoidaConformance(KafkaConformance):
    broker = "noida"
