"""A real confluent-kafka producer with Confluent's AvroSerializer and no extra headers,
read by the bus on a real Kafka-protocol broker (ConsumerOptions(intake="foreign")),
both sides using one Schema Registry over HTTP (the in-test server of conftest.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from dotmac.events import ConsumerOptions
from dotmac.events.retry import set_testing
from dotmac.events.testing import Collector
from dotmac_events_avro import AvroCodec, HttpSchemaRegistry

kafka_testing = pytest.importorskip("dotmac_events_kafka.testing")


@pytest.fixture(scope="module")
def kafka_servers() -> Iterator[str]:
    with kafka_testing.kafka_bootstrap_servers() as servers:
        yield servers


def produce(
    servers: str, topic: str, registry_url: str, schema: dict[str, Any], values: list[dict[str, Any]]
) -> None:
    serializer = AvroSerializer(SchemaRegistryClient({"url": registry_url}), json.dumps(schema))
    producer = Producer({"bootstrap.servers": servers})
    failures: list[Any] = []
    for value in values:
        body = serializer(value, SerializationContext(topic, MessageField.VALUE))
        producer.produce(
            topic, key=str(value["id"]).encode(), value=body, on_delivery=lambda err, _: failures.append(err)
        )
    assert producer.flush(30) == 0, "records left unsent"
    assert failures == [None] * len(values)


async def test_records_of_the_confluent_avro_serializer_are_events(
    kafka_servers: str, registry_server: Any, orders: SimpleNamespace
) -> None:
    from dotmac_events_kafka import create_kafka_bus

    set_testing(True)
    topic = f"avro.{uuid.uuid4().hex[:10]}"
    codec = AvroCodec(schemas={topic: orders.v1}, registry=HttpSchemaRegistry(registry_server.url))
    config = kafka_testing.fast_config(kafka_servers, num_partitions=1)
    seen = Collector()
    values = [{"id": 7, "customer": "acme", "note": None}, {"id": 8, "customer": "zoë", "note": "gift"}]
    try:
        async with create_kafka_bus(config, topic_codecs={topic: codec}) as bus:
            await bus.subscribe(topic, seen, options=ConsumerOptions(intake="foreign", max_retries=0))
            produce(kafka_servers, topic, registry_server.url, orders.v1, values)
            await seen.wait_count(2, 20)
    finally:
        set_testing(False)
    assert [dict(e.payload) for e in seen.events] == values
    assert [e.key for e in seen.events] == ["7", "8"]
    assert [e.event_id for e in seen.events] == [f"{topic}:0:0", f"{topic}:0:1"]
    assert all(e.headers == {} for e in seen.events)
    # The serializer registered the schema under <topic>-value; the codec read it by id.
    assert f"{topic}-value" in registry_server.subjects
