"""The transport against a real Kafka-protocol broker: topics, compression, idempotence
fallback, positioning, and the commit rules (contiguous acks, releases, revocation)."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from dotmac.events import (
    ConsumerOptions,
    Delivery,
    Event,
    EventBus,
    Message,
    SubscriptionSpec,
    TransportError,
    TransportUnavailableError,
)
from dotmac.events.testing import Collector
from dotmac.events.testing.collect import wait_for
from dotmac_events_kafka import KafkaConfig, KafkaTransport, create_kafka_bus
from dotmac_events_kafka import transport as transport_module
from dotmac_events_kafka.testing import free_port

MakeBus = Callable[..., EventBus]


async def committed(servers: str, group: str, tp: TopicPartition) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.committed(tp)
    finally:
        await consumer.stop()


async def wait_committed(servers: str, group: str, tp: TopicPartition, expected: int) -> None:
    last: list[int | None] = [None]
    deadline = asyncio.get_running_loop().time() + 10
    while asyncio.get_running_loop().time() < deadline:
        last[0] = await committed(servers, group, tp)
        if last[0] == expected:
            return
        await asyncio.sleep(0.05)  # polling the broker: no event announces a commit
    raise AssertionError(f"committed offset of {tp} is {last[0]}, expected {expected}")


class Sink:
    """A sink that keeps deliveries for the test to ack or release by hand."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.changed = asyncio.Event()

    async def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self.changed.set()

    async def wait(self, n: int, timeout: float = 10) -> None:
        await wait_for(lambda: len(self.deliveries) >= n, timeout, what=f"{n} deliveries")

    def at(self, offset: int) -> Delivery:
        return next(d for d in self.deliveries if d.message.position == f"0:{offset}")


def msgs(topic: str, n: int, start: int = 0) -> list[Message]:
    return [
        Message(topic=topic, value=b'{"i": %d}' % i, key="k", headers={"n": str(i)}) for i in range(start, n)
    ]


async def test_topics_are_created_with_the_configured_partitions(make_bus: MakeBus, topic: str) -> None:
    async with make_bus(num_partitions=5) as bus:
        await bus.publish(Event(topic=topic, payload={"a": 1}))
        transport = bus.transport
        assert isinstance(transport, KafkaTransport)
        assert await transport._partitions(topic) == set(range(5))


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_every_compression_round_trips(make_bus: MakeBus, topic: str, codec: str) -> None:
    async with make_bus(compression_type=codec) as bus:
        sent = [Event(topic=topic, payload={"i": i, "text": "x" * 200}, key=f"k{i}") for i in range(20)]
        await bus.publish_many(sent)
        letters = await bus.transport.read(topic, limit=50)
        assert sorted(m.headers["ce_id"] for m in letters) == sorted(e.event_id for e in sent)


async def test_idempotence_falls_back_with_a_warning_or_is_used(
    kafka_servers: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger="dotmac_events_kafka")
    monkeypatch.setattr(transport_module, "_idempotence_refused", set())
    transport = KafkaTransport(KafkaConfig(bootstrap_servers=kafka_servers))
    await transport.start()
    try:
        fell_back = [r for r in caplog.records if "cannot run an idempotent producer" in r.getMessage()]
        # Tansu refuses InitProducerId; a real Kafka grants it. Either way it is known and said.
        assert transport.idempotent != bool(fell_back)
        assert transport.describe()["idempotence"] == transport.idempotent
    finally:
        await transport.close()
    if not transport.idempotent:
        strict = KafkaTransport(KafkaConfig(bootstrap_servers=kafka_servers, enable_idempotence=True))
        with pytest.raises(TransportError, match="idempotent"):
            await strict.start()
        await strict.close()


async def test_unreachable_broker_is_a_retriable_error() -> None:
    bus = create_kafka_bus(KafkaConfig(bootstrap_servers=f"127.0.0.1:{free_port()}", request_timeout_ms=2000))
    with pytest.raises(TransportUnavailableError) as info:
        await bus.start()
    assert info.value.retriable is True
    await bus.close()


async def test_new_group_latest_is_live_on_return_and_skips_the_backlog(
    make_bus: MakeBus, topic: str, group: str
) -> None:
    # Several records per batch: the case where ListOffsets(latest) is wrong on Tansu.
    async with make_bus() as bus:
        await bus.publish_many([Event(topic=topic, payload={"i": i}, key=f"k{i % 3}") for i in range(30)])
        seen = Collector()
        await bus.subscribe(topic, seen, group=group)
        await bus.publish(Event(topic=topic, payload={"i": 100}, key="k0"))
        await seen.wait_count(1, 10)
        more = Collector()
        await bus.subscribe(topic, more)  # broadcast, latest
        await bus.publish(Event(topic=topic, payload={"i": 101}, key="k1"))
        await more.wait_count(1, 10)
        await seen.wait_count(2, 10)
        assert seen.payloads("i") == [100, 101]
        assert more.payloads("i") == [101]


async def test_broadcast_from_earliest_sees_the_backlog(make_bus: MakeBus, topic: str) -> None:
    async with make_bus() as bus:
        await bus.publish_many([Event(topic=topic, payload={"i": i}) for i in range(10)])
        seen = Collector()
        await bus.subscribe(topic, seen, options=ConsumerOptions(start_from="earliest"))
        await seen.wait_count(10, 10)
        assert sorted(seen.payloads("i")) == list(range(10))


async def test_read_of_a_missing_topic_is_empty_and_creates_nothing(make_bus: MakeBus, topic: str) -> None:
    async with make_bus() as bus:
        transport = bus.transport
        assert isinstance(transport, KafkaTransport)
        assert await transport.read(topic) == []
        assert topic not in await transport._existing_topics()


async def test_commit_stops_at_the_first_unacked_offset(
    make_bus: MakeBus, kafka_servers: str, topic: str, group: str
) -> None:
    """Acks of 0, 2, 3 commit 1; the ack of 1 then commits 4."""
    async with make_bus(num_partitions=1) as bus:
        transport = bus.transport
        await transport.publish(msgs(topic, 4))
        sink = Sink()
        spec = SubscriptionSpec(topics=(topic,), group=group, consumer_name="c1", start_from="earliest")
        sub = await transport.subscribe(spec, sink)
        await sink.wait(4)
        tp = TopicPartition(topic, 0)
        for offset in (0, 2, 3):
            await sink.at(offset).ack()
        await wait_committed(kafka_servers, group, tp, 1)
        await sink.at(1).ack()
        await wait_committed(kafka_servers, group, tp, 4)
        assert [d.message.headers["n"] for d in sink.deliveries] == ["0", "1", "2", "3"]
        assert all(d.ordering_key == (topic, 0) for d in sink.deliveries)
        await sub.stop()


async def test_released_record_is_fetched_again_and_blocks_the_commit(
    make_bus: MakeBus, kafka_servers: str, topic: str, group: str
) -> None:
    async with make_bus(num_partitions=1) as bus:
        transport = bus.transport
        await transport.publish(msgs(topic, 3))
        sink = Sink()
        spec = SubscriptionSpec(topics=(topic,), group=group, consumer_name="c1", start_from="earliest")
        sub = await transport.subscribe(spec, sink)
        await sink.wait(3)
        tp = TopicPartition(topic, 0)
        first = sink.deliveries[:3]
        await first[0].ack()
        await first[1].release()  # e.g. its dead letter could not be written
        await first[2].ack()  # acked before the seek: forgotten, delivered again
        await sink.wait(5)
        again = sink.deliveries[3:]
        assert [d.message.position for d in again] == ["0:1", "0:2"]
        assert again[0].delivery_count == 2
        assert await committed(kafka_servers, group, tp) in (None, 0, 1)
        for delivery in again:
            await delivery.ack()
        await wait_committed(kafka_servers, group, tp, 3)
        await sub.stop()


async def test_stop_never_commits_past_a_released_record(
    make_bus: MakeBus, kafka_servers: str, topic: str, group: str
) -> None:
    """A record released at shutdown (its handler was cancelled) stays uncommitted, even
    though later records were acked."""
    async with make_bus(num_partitions=1) as bus:
        transport = bus.transport
        await transport.publish(msgs(topic, 4))
        sink = Sink()
        spec = SubscriptionSpec(topics=(topic,), group=group, consumer_name="c1", start_from="earliest")
        sub = await transport.subscribe(spec, sink)
        await sink.wait(4)
        await sink.at(0).ack()
        await sub.stop()
        # After stop() the core settles what it holds: acks still count, releases block.
        await sink.at(1).release()
        await sink.at(2).ack()
        await sink.at(3).ack()
    assert await committed(kafka_servers, group, TopicPartition(topic, 0)) == 1


async def test_acks_of_revoked_partitions_do_not_commit(
    make_bus: MakeBus, kafka_servers: str, topic: str, group: str
) -> None:
    """A second member takes partitions over while the first still holds un-acked records
    of them: those acks, arriving after the revocation, commit nothing."""
    async with make_bus(num_partitions=2, revoke_timeout_ms=0) as first, make_bus() as second:
        transport = first.transport
        # Ten keys spread over both partitions (the default partitioner is deterministic).
        await transport.publish([Message(topic=topic, value=b"{}", key=f"k{i}") for i in range(10)])
        sink = Sink()
        spec = SubscriptionSpec(topics=(topic,), group=group, consumer_name="c1", start_from="earliest")
        sub = await transport.subscribe(spec, sink)
        await sink.wait(10)
        assert {d.message.position.split(":")[0] for d in sink.deliveries} == {"0", "1"}  # type: ignore[union-attr]
        before = {p: await committed(kafka_servers, group, TopicPartition(topic, p)) for p in (0, 1)}
        other = Sink()
        spec2 = SubscriptionSpec(topics=(topic,), group=group, consumer_name="c2")
        sub2 = await second.transport.subscribe(spec2, other)
        for delivery in sink.deliveries:
            await delivery.ack()
        taken = {tp.partition for tp in sub2.assignment}  # type: ignore[attr-defined]
        assert taken, "the second member got no partition"
        for p in taken:
            # Records re-fetched by the new owner are the proof that nothing was committed.
            assert await committed(kafka_servers, group, TopicPartition(topic, p)) == before[p]
        await wait_for(
            lambda: {int(d.message.position.split(":")[0]) for d in other.deliveries} >= taken,  # type: ignore[union-attr]
            10,
            what="redelivery to the new owner",
        )
        await sub.stop()
        await sub2.stop()


@pytest.mark.usefixtures("rebalancing_broker")
async def test_queued_records_of_a_revoked_partition_are_not_handled(
    make_bus: MakeBus, topic: str, group: str
) -> None:
    """Records still queued in the core when their partition is revoked are withdrawn:
    only the new owner handles them (the one running handler may finish twice)."""
    calls: Counter[int] = Counter()

    async def slow(event: Event) -> None:
        calls[event.payload["i"]] += 1
        await asyncio.sleep(0.05)

    n = 60
    options = ConsumerOptions(concurrency=1, prefetch_count=100)
    async with make_bus(num_partitions=2, revoke_timeout_ms=0) as a, make_bus() as b:
        await a.subscribe(topic, slow, group=group, options=options)
        await a.publish_many([Event(topic=topic, payload={"i": i}, key=f"k{i}") for i in range(n)])
        await wait_for(lambda: sum(calls.values()) >= 3, 10, what="the first member at work")
        await b.subscribe(topic, slow, group=group, options=options)
        await wait_for(lambda: len(calls) >= n, 30, what="every event handled")
    duplicates = sum(calls.values()) - len(calls)
    assert duplicates <= 2, f"{duplicates} records handled again after their partition was revoked"
