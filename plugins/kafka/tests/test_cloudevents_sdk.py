"""The official CloudEvents SDK and the bus on a real broker, both directions, both modes.

The SDK's Kafka binding builds the record (headers, key, value); a plain aiokafka
producer sends it and the bus consumes it. The other way, a plain aiokafka consumer
reads what the bus wrote and the SDK parses it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from dotmac.events.testing import Collector
from dotmac.events.testing.cloudevents_sdk import check_sdk_event, our_event, read_record, sdk_record
from dotmac_events_kafka import create_kafka_bus
from dotmac_events_kafka.testing import fast_config

pytest.importorskip("cloudevents.core.bindings.kafka")


@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_an_sdk_record_is_consumed_with_every_attribute(
    kafka_servers: str, topic: str, mode: str
) -> None:
    record = sdk_record(mode)
    seen = Collector()
    async with create_kafka_bus(fast_config(kafka_servers)) as bus:
        await bus.subscribe(topic, seen)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_servers)
        await producer.start()
        try:
            await producer.send_and_wait(
                topic, value=record.value, key=record.key.encode(), headers=list(record.headers.items())
            )
        finally:
            await producer.stop()
        await seen.wait_count(1, 15)
    check_sdk_event(seen.events[0])


@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_the_sdk_parses_what_the_bus_published(kafka_servers: str, topic: str, mode: str) -> None:
    event, expected = our_event(topic)
    config = fast_config(kafka_servers, num_partitions=1)
    async with create_kafka_bus(config, content_mode=mode, source="/billing") as bus:
        await bus.publish(event)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_servers, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        records: list[Any] = []
        while not records:
            batch = await asyncio.wait_for(consumer.getmany(timeout_ms=500), 15)
            records = [r for rs in batch.values() for r in rs]
    finally:
        await consumer.stop()
    (record,) = records
    back = read_record(mode, dict(record.headers), record.key, record.value)
    assert back.get_attributes() == {**expected, "source": "/billing"}
    assert back.get_data() == {"id": 7}
