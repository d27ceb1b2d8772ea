"""Records from a plain Kafka producer (no envelope) consumed with intake="foreign"."""

from __future__ import annotations

from datetime import datetime, timezone

from aiokafka import AIOKafkaProducer

from dotmac.events import ConsumerOptions, Event
from dotmac.events.testing import Collector, wait_dead_letters
from dotmac_events_kafka import create_kafka_bus
from dotmac_events_kafka.testing import fast_config

FOREIGN = ConsumerOptions(intake="foreign", max_retries=0)


async def test_plain_json_and_bytes_records_are_events(kafka_servers: str, topic: str) -> None:
    blobs = f"{topic}.raw"
    seen = Collector()
    config = fast_config(kafka_servers, num_partitions=1)
    async with create_kafka_bus(config, topic_codecs={blobs: "raw"}) as bus:
        await bus.subscribe([topic, blobs], seen, options=FOREIGN)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_servers)
        await producer.start()
        try:
            sent = await producer.send_and_wait(
                topic,
                value=b'{"id": 7}',
                key=b"order-7",
                headers=[("x-src", b"connect")],
                timestamp_ms=1764558000000,
            )
            raw = await producer.send_and_wait(blobs, value=b"\x00\xffbinary")
        finally:
            await producer.stop()
        await seen.wait_count(2, 15)
    by_topic = {e.topic: e for e in seen.events}
    event = by_topic[topic]
    assert event.event_id == f"{topic}:{sent.partition}:{sent.offset}"
    assert event.payload == {"id": 7}
    assert event.key == "order-7"
    assert dict(event.headers) == {"x-src": "connect"}
    assert event.metadata.occurred_at == datetime.fromtimestamp(1764558000, timezone.utc)
    blob = by_topic[blobs]
    assert blob.payload == b"\x00\xffbinary"
    assert blob.event_id == f"{blobs}:{raw.partition}:{raw.offset}"
    assert blob.metadata.content_type == "application/octet-stream"


async def test_a_replayed_foreign_record_keeps_the_id_intake_gave_it(kafka_servers: str, topic: str) -> None:
    # A reader outside any group (assigned every partition): what is tested is the
    # intake id through a dead letter and the replay ledger, not the group protocol,
    # which noida-db implements with known faults (see the rebalancing_broker fixture).
    broken = True

    def fail(event: Event, count: int) -> BaseException | None:
        return RuntimeError("not yet") if broken else None

    seen = Collector(fail=fail)
    config = fast_config(kafka_servers, num_partitions=1)
    options = ConsumerOptions(intake="foreign", max_retries=0, start_from="earliest")
    async with create_kafka_bus(config) as bus:
        await bus.subscribe(topic, seen, options=options)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_servers)
        await producer.start()
        try:
            sent = await producer.send_and_wait(
                topic, value=b'{"id": 7}', key=b"order-7", timestamp_ms=1764558000000
            )
        finally:
            await producer.stop()
        # Two steps, so a timeout says which one did not happen.
        await seen.wait(lambda c: c.total_calls >= 1, 30, what="the record reaching the handler")
        letters = await wait_dead_letters(bus, f"{topic}.dlq", 1, 30)
        broken = False
        assert await bus.dlq.replay(f"{topic}.dlq", event_ids=[letters[0].event_id or ""]) == 1
        await seen.wait_count(1, 20)
        assert await bus.dlq.replay(f"{topic}.dlq") == 0  # the ledger has it
    intake_id = f"{topic}:{sent.partition}:{sent.offset}"
    assert letters[0].event_id == intake_id
    event = seen.events[0]
    assert event.event_id == intake_id
    assert seen.calls == {intake_id: 2}
    assert event.payload == {"id": 7}
    assert event.key == "order-7"
    assert event.metadata.occurred_at == datetime.fromtimestamp(1764558000, timezone.utc)
