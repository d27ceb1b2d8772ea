"""The transport against a real broker: headers, redelivery counts, DLQ retention,
unroutable events, prefetch. Each test uses its own topics in the session's vhost."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dotmac.events import ConsumerOptions, Event, PublishError, create_bus
from dotmac.events.testing.collect import Collector, wait_for
from dotmac.events.transport import Delivery, Message, SubscriptionSpec
from dotmac_events_rabbitmq import KEY_HEADER, RabbitMQTransport
from dotmac_events_rabbitmq.transport import RETAINED_SUFFIX

pytestmark = pytest.mark.timeout(60)


def topic(name: str) -> str:
    return f"rmq.{name}.{uuid.uuid4().hex[:8]}"


@contextlib.asynccontextmanager
async def started(url: str) -> AsyncIterator[RabbitMQTransport]:
    t = create_bus(url).transport
    assert isinstance(t, RabbitMQTransport)
    await t.start()
    try:
        yield t
    finally:
        await t.close()


@pytest.fixture
async def transport(rabbitmq_url: str) -> AsyncIterator[RabbitMQTransport]:
    async with started(rabbitmq_url) as t:
        yield t


def spec(t: str, group: str | None, prefetch: int = 10) -> SubscriptionSpec:
    return SubscriptionSpec(topics=(t,), group=group, consumer_name=uuid.uuid4().hex, prefetch=prefetch)


class Inbox:
    """A sink that keeps deliveries for the test to settle."""

    def __init__(self) -> None:
        self.items: list[Delivery] = []

    async def __call__(self, delivery: Delivery) -> None:
        self.items.append(delivery)

    async def wait(self, n: int, timeout: float = 10.0) -> None:
        await wait_for(lambda: len(self.items) >= n, timeout, what=f"{n} deliveries (have {len(self.items)})")


HEADERS = {
    "x-empty": "",
    "x-spaces": "  padded value  ",
    "x-unicode": "Zoë ☕ 日本語 — ünïcödé",
    "x-long": "v" * 8000,
    "ce_id": "e-1",
    "content-type": "application/json",
}


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_headers_key_and_redelivery_count(rabbitmq_url: str, queue_type: str) -> None:
    async with started(f"{rabbitmq_url}?queue_type={queue_type}") as t:
        name = topic("headers")
        inbox = Inbox()
        sub = await t.subscribe(spec(name, "g"), inbox)
        await t.publish([Message(topic=name, value=b"{}", key="clé-1", headers=HEADERS)])
        await inbox.wait(1)
        first = inbox.items[0]
        assert first.delivery_count == 1
        assert first.message.key == "clé-1"
        assert dict(first.message.headers) == HEADERS, "headers changed on the way"
        await first.release()
        await inbox.wait(2)
        second = inbox.items[1]
        assert second.delivery_count == 2
        assert dict(second.message.headers) == HEADERS, "broker headers leaked"
        assert KEY_HEADER not in second.message.headers
        if queue_type == "quorum":
            await second.release()
            await inbox.wait(3)
            assert inbox.items[2].delivery_count == 3
        await inbox.items[-1].ack()
        await sub.stop()


async def test_max_deliveries_dead_letters_an_event_that_keeps_coming_back(rabbitmq_url: str) -> None:
    """A consumer that dies on an event (simulated: its channel is closed un-acked) makes
    the quorum queue count; past max_deliveries the runner dead-letters it."""
    name = topic("max-deliveries")
    async with create_bus(f"{rabbitmq_url}?max_deliveries=2") as bus:
        t = bus.transport
        assert isinstance(t, RabbitMQTransport)
        counts = []
        for attempt in range(2):
            inbox = Inbox()
            sub = await t.subscribe(spec(name, "g"), inbox)
            if attempt == 0:
                await bus.publish(Event(topic=name, payload={"i": 1}))
            await inbox.wait(1)
            counts.append(inbox.items[0].delivery_count)
            await sub.close()  # type: ignore[attr-defined]  # un-acked: the broker takes it back
        assert counts == [1, 2]
        handled = Collector()
        await bus.subscribe(name, handled, group="g")
        letters = await _wait_letters(bus, f"{name}.dlq", 1)
        assert letters[0].reason == "max_deliveries"
        assert handled.events == []


async def _wait_letters(bus: Any, dlq: str, n: int) -> list[Any]:
    letters: list[Any] = []
    deadline = asyncio.get_running_loop().time() + 10
    while len(letters) < n:
        assert asyncio.get_running_loop().time() < deadline, f"expected {n} dead letters, have {len(letters)}"
        await asyncio.sleep(0.05)
        letters = await bus.dlq.list(dlq)
    return letters


async def test_dead_letters_are_retained_under_any_name_and_read_leaves_them(
    transport: RabbitMQTransport,
) -> None:
    custom = topic("failed-events")  # a dlq_topic that does not end in .dlq
    sent = [
        Message(
            topic=custom, value=f"{i}".encode(), headers={"x-dlq-original-topic": "orders", "ce_id": f"{i}"}
        )
        for i in range(5)
    ]
    await transport.publish(sent)
    assert transport.unroutable == 0
    first = await transport.read(custom, limit=3)
    again = await transport.read(custom)
    assert [m.value for m in first] == [b"0", b"1", b"2"]
    assert [m.value for m in again] == [b"0", b"1", b"2", b"3", b"4"], "read() must not consume"
    assert await transport.read(topic("never-used")) == []


async def test_a_deleted_retained_queue_is_declared_again(transport: RabbitMQTransport) -> None:
    name = topic("deleted") + ".dlq"
    await transport.publish([Message(topic=name, value=b"1")])
    channel = await transport.open_channel()
    await channel.queue_delete(transport.config.queue_name(name, RETAINED_SUFFIX))
    await channel.close()
    await transport.publish([Message(topic=name, value=b"2")])
    assert [m.value for m in await transport.read(name)] == [b"2"]
    assert transport.unroutable == 0


async def test_dlq_topic_of_a_group_keeps_letters_nobody_listens_to(rabbitmq_url: str) -> None:
    name = topic("nobody-listens")
    async with create_bus(rabbitmq_url) as bus:
        sub = await bus.subscribe(
            name,
            Collector(fail=lambda e, n: ValueError("no")),
            group="g",
            options=ConsumerOptions(max_retries=0, dlq_topic=f"{name}.failed"),
        )
        await bus.publish_many([Event(topic=name, payload={"i": i}) for i in range(3)])
        await wait_for(lambda: sub.dead_lettered == 3, 10, what="3 dead letters")
        letters = await bus.dlq.list(f"{name}.failed")
        assert sorted(dl.event.payload["i"] for dl in letters if dl.event) == [0, 1, 2]


async def test_unroutable_events_are_counted_or_refused(
    rabbitmq_url: str, transport: RabbitMQTransport
) -> None:
    await transport.publish([Message(topic=topic("nobody"), value=b"x")])
    assert transport.unroutable == 1
    async with started(f"{rabbitmq_url}?unroutable=error") as strict:
        with pytest.raises(PublishError, match="no queue is bound"):
            await strict.publish([Message(topic=topic("nobody"), value=b"x")])


async def test_prefetch_bounds_unacked_deliveries(transport: RabbitMQTransport) -> None:
    name = topic("prefetch")
    inbox = Inbox()
    await transport.subscribe(spec(name, "g", prefetch=3), inbox)
    await transport.publish([Message(topic=name, value=str(i).encode()) for i in range(10)])
    await inbox.wait(3)
    # The broker pushes nothing past the window: give it time to misbehave, then check.
    await asyncio.sleep(0.5)
    assert len(inbox.items) == 3, f"{len(inbox.items)} un-acked deliveries with prefetch=3"
    await inbox.items[0].ack()
    await inbox.wait(4)
    await asyncio.sleep(0.3)
    assert len(inbox.items) == 4
    assert [d.message.value for d in inbox.items] == [b"0", b"1", b"2", b"3"], "queue order"


async def test_group_members_share_and_stopped_member_gives_back(transport: RabbitMQTransport) -> None:
    name = topic("give-back")
    held, other = Inbox(), Inbox()
    sub = await transport.subscribe(spec(name, "g", prefetch=5), held)
    await transport.publish([Message(topic=name, value=str(i).encode()) for i in range(5)])
    await held.wait(5)
    await sub.stop()
    assert sub in transport._subscriptions, "the channel must stay open for the held deliveries"
    for delivery in held.items:
        await delivery.release()
    await wait_for(lambda: sub not in transport._subscriptions, 5, what="the stopped channel closing")
    await transport.subscribe(spec(name, "g"), other)
    await other.wait(5)
    assert sorted(d.message.value for d in other.items) == [str(i).encode() for i in range(5)]


async def test_plain_amqp_clients_interoperate(rabbitmq_url: str) -> None:
    """An event published by a plain AMQP client is consumed; one published by the bus
    reads as body plus ``ce_*`` headers, with the key in ``ce_partitionkey``."""
    import aio_pika

    name = topic("interop")
    async with create_bus(rabbitmq_url) as bus:
        seen = Collector()
        await bus.subscribe(name, seen, group="g")
        config = bus.transport.config  # type: ignore[attr-defined]
        plain_queue = f"plain-{uuid.uuid4().hex[:8]}"
        connection = await aio_pika.connect(rabbitmq_url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange(config.exchange)
            queue = await channel.declare_queue(plain_queue, exclusive=True)
            await queue.bind(exchange, routing_key=name)
            await exchange.publish(
                aio_pika.Message(
                    b'{"i": 5}',
                    headers={
                        "ce_id": "plain-1",
                        "ce_type": "t",
                        "ce_source": "plain",
                        "ce_specversion": "1.0",
                        "content-type": "application/json",
                        KEY_HEADER: "k5",
                    },
                ),
                routing_key=name,
            )
            await seen.wait_count(1, 10)
            assert seen.events[0].event_id == "plain-1"
            assert seen.events[0].key == "k5"
            assert seen.events[0].payload == {"i": 5}
            sent = Event(topic=name, payload={"i": 6}, key="k6")
            await bus.publish(sent)
            got = [m async for m in _take(queue, 2)]
            mine = got[1]
            assert mine.headers["ce_id"] == sent.event_id
            assert mine.headers[KEY_HEADER] == "k6"
            assert mine.content_type == "application/json"
            assert mine.body == b'{"i":6}'


async def _take(queue: Any, n: int) -> AsyncIterator[Any]:
    async with queue.iterator() as messages:
        async for message in messages:
            await message.ack()
            yield message
            n -= 1
            if n == 0:
                return


async def test_config_prefetch_caps_the_subscription(rabbitmq_url: str) -> None:
    async with started(f"{rabbitmq_url}?prefetch_count=2") as t:
        name = topic("cap")
        inbox = Inbox()
        await t.subscribe(spec(name, "g", prefetch=50), inbox)
        await t.publish([Message(topic=name, value=b"x") for _ in range(5)])
        await inbox.wait(2)
        await asyncio.sleep(0.5)
        assert len(inbox.items) == 2, f"{len(inbox.items)} un-acked with prefetch_count=2"


async def test_a_failing_sink_does_not_stop_the_consumer(transport: RabbitMQTransport) -> None:
    name = topic("failing-sink")
    calls: list[bytes] = []

    async def sink(delivery: Delivery) -> None:
        calls.append(delivery.message.value)
        if len(calls) == 1:
            raise RuntimeError("the core fell over")
        await delivery.ack()

    await transport.subscribe(spec(name, "g"), sink)
    await transport.publish([Message(topic=name, value=b"a"), Message(topic=name, value=b"b")])
    await wait_for(lambda: len(calls) >= 3, 10, what="the failed message redelivered")
    assert sorted(calls) == [b"a", b"a", b"b"]
