"""Messages published by a plain AMQP client (aio-pika, no envelope) consumed with
intake="foreign"; the key header beside the partitionkey extension."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from dotmac.events import ConsumerOptions, Event, EventBus, create_bus
from dotmac.events.testing import Collector, wait_dead_letters
from dotmac.events.testing.collect import wait_for
from dotmac.events.transport import Delivery, SubscriptionSpec
from dotmac_events_rabbitmq import KEY_HEADER, RabbitMQTransport
from dotmac_events_rabbitmq._consumer import foreign_position, incoming_message

pytestmark = pytest.mark.timeout(60)

FOREIGN = ConsumerOptions(intake="foreign", max_retries=0)
STAMP = datetime(2026, 12, 1, 3, 4, 5, tzinfo=timezone.utc)


def topic(name: str) -> str:
    return f"rmq.{name}.{uuid.uuid4().hex[:8]}"


class Plain:
    """A plain aio-pika client publishing to the bus's exchange."""

    def __init__(self, url: str, exchange: str) -> None:
        self.url, self.exchange_name = url, exchange

    async def __aenter__(self) -> Plain:
        self.connection = await aio_pika.connect(self.url)
        channel = await self.connection.channel()
        self.exchange = await channel.get_exchange(self.exchange_name)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.connection.close()

    async def send(self, routing_key: str, body: bytes, **properties: Any) -> None:
        await self.exchange.publish(aio_pika.Message(body, **properties), routing_key=routing_key)


def plain(bus: EventBus, url: str) -> Plain:
    transport = bus.transport
    assert isinstance(transport, RabbitMQTransport)
    return Plain(url, transport.config.exchange)


async def test_plain_messages_are_events(rabbitmq_url: str) -> None:
    name = topic("foreign")
    seen = Collector()
    async with create_bus(rabbitmq_url) as bus:
        await bus.subscribe(name, seen, group="g", options=FOREIGN)
        async with plain(bus, rabbitmq_url) as client:
            await client.send(
                name,
                b'{"id": 7}',
                message_id="m-7",
                timestamp=STAMP,
                content_type="application/json",
                correlation_id="c-7",
                reply_to="replies",
                type="order.created",
                app_id="shop",
                headers={"x-src": "aio-pika", "x-count": 3},
            )
            await client.send(name, b'{"id": 8}', headers={KEY_HEADER: "order-8"})
        await seen.wait_count(2, 10)
    first, second = seen.events
    assert first.event_id == f"{name}:m-7"
    assert first.payload == {"id": 7}
    assert first.key == name  # no key header: the routing key
    assert first.metadata.occurred_at == STAMP
    assert first.metadata.content_type == "application/json"
    assert dict(first.headers) == {
        "x-src": "aio-pika",
        "x-count": "3",
        "amqp-correlation-id": "c-7",
        "amqp-reply-to": "replies",
        "amqp-type": "order.created",
        "amqp-app-id": "shop",
    }
    assert first.metadata.reply_to is None and first.metadata.correlation_id is None
    # aio-pika (aiormq) gives every message a random message_id when it has none.
    assert re.fullmatch(rf"{re.escape(name)}:[0-9a-f]{{32}}", second.event_id)
    assert second.payload == {"id": 8}
    assert second.key == "order-8"
    assert dict(second.headers) == {}
    assert second.metadata.occurred_at > STAMP  # no timestamp property: the time it was received


async def test_plain_bytes_messages_are_raw_events(rabbitmq_url: str) -> None:
    name = topic("blobs")
    seen = Collector()
    async with create_bus(rabbitmq_url, topic_codecs={name: "raw"}) as bus:
        await bus.subscribe(name, seen, group="g", options=FOREIGN)
        async with plain(bus, rabbitmq_url) as client:
            await client.send(name, b"\x00\xffbinary")
        await seen.wait_count(1, 10)
    event = seen.events[0]
    assert event.payload == b"\x00\xffbinary"
    assert event.metadata.content_type == "application/octet-stream"
    assert re.fullmatch(rf"{re.escape(name)}:[0-9a-f]{{32}}", event.event_id)


async def test_the_default_intake_dead_letters_a_plain_message(rabbitmq_url: str) -> None:
    name = topic("strict")
    seen = Collector()
    async with create_bus(rabbitmq_url) as bus:
        await bus.subscribe(name, seen, group="g", options=ConsumerOptions(max_retries=0))
        async with plain(bus, rabbitmq_url) as client:
            await client.send(name, b'{"id": 7}', message_id="m-7", content_type="application/json")
        [letter] = await wait_dead_letters(bus, f"{name}.dlq", 1, 10)
    assert seen.events == []
    assert letter.reason == "decode"
    assert "no ce_id" in (letter.error_message or "")
    assert letter.message.value == b'{"id": 7}'


class Inbox:
    def __init__(self) -> None:
        self.items: list[Delivery] = []

    async def __call__(self, delivery: Delivery) -> None:
        self.items.append(delivery)


async def test_the_id_is_stable_across_redeliveries(rabbitmq_url: str) -> None:
    """Released and delivered again, a plain message has the same position, so the same
    event id (aio-pika gives each message its own message_id)."""
    name = topic("stable")
    bus = create_bus(rabbitmq_url)
    async with bus:
        transport = bus.transport
        inbox = Inbox()
        sub = await transport.subscribe(SubscriptionSpec((name,), "g", uuid.uuid4().hex, 10), inbox)
        async with plain(bus, rabbitmq_url) as client:
            for body, headers in (
                (b'{"id": 1}', {"x-a": "1"}),
                (b'{"id": 1}', {"x-a": "1"}),
                (b'{"id": 2}', {}),
            ):
                await client.send(name, body, headers=headers, timestamp=STAMP)
        await wait_for(lambda: len(inbox.items) == 3, 10, what="3 deliveries")
        first = [d.message for d in inbox.items]
        for delivery in inbox.items:
            await delivery.release()
        await wait_for(lambda: len(inbox.items) == 6, 10, what="3 redeliveries")
        again = [d.message for d in inbox.items[3:]]
        for delivery in inbox.items[3:]:
            await delivery.ack()
        await sub.stop()
        ids = [bus.decode_foreign(m).event_id for m in first]
        assert [bus.decode_foreign(m).event_id for m in again] == ids
    assert len(set(ids)) == 3
    assert [d.delivery_count for d in inbox.items[3:]] == [2, 2, 2]
    assert all(m.timestamp == STAMP for m in first)


async def test_a_replayed_plain_message_keeps_the_id_intake_gave_it(rabbitmq_url: str) -> None:
    name = topic("replay")
    broken = True

    def fail(event: Event, count: int) -> BaseException | None:
        return RuntimeError("not yet") if broken else None

    seen = Collector(fail=fail)
    async with create_bus(rabbitmq_url) as bus:
        await bus.subscribe(name, seen, group="g", options=FOREIGN)
        async with plain(bus, rabbitmq_url) as client:
            await client.send(name, b'{"id": 7}', headers={"x-a": "1"}, timestamp=STAMP)
        [letter] = await wait_dead_letters(bus, f"{name}.dlq", 1, 10)
        broken = False
        assert await bus.dlq.replay(f"{name}.dlq") == 1
        await seen.wait_count(1, 10)
    intake_id = next(iter(seen.calls))
    assert letter.event_id == intake_id == seen.events[0].event_id
    assert seen.calls == {intake_id: 2}
    assert seen.events[0].payload == {"id": 7}
    assert seen.events[0].metadata.occurred_at == STAMP
    assert seen.events[0].headers["x-a"] == "1"


# -- the position of a message without message_id (pika and rabbitmqadmin send none) --------
def delivered(
    body: bytes = b'{"id": 1}', exchange: str = "events", **properties: Any
) -> AbstractIncomingMessage:
    """An incoming message as aio-pika builds it from the frames the broker sends."""
    from aiormq.abc import DeliveredMessage
    from pamqp import commands
    from pamqp.header import ContentHeader

    deliver = commands.Basic.Deliver(
        consumer_tag="c", delivery_tag=1, exchange=exchange, routing_key="orders"
    )
    header = ContentHeader(0, len(body), commands.Basic.Properties(**properties))
    return aio_pika.IncomingMessage(DeliveredMessage(deliver, header, body, None), no_ack=True)  # type: ignore[arg-type]


def test_a_message_without_message_id_is_known_by_a_hash_of_what_it_carries() -> None:
    base = foreign_position(delivered(headers={"x-a": "1"}, timestamp=STAMP))
    assert re.fullmatch(r"sha256:[0-9a-f]{32}", base)
    # Byte-identical messages share it; what the broker adds on a redelivery does not count.
    assert foreign_position(delivered(headers={"x-a": "1"}, timestamp=STAMP)) == base
    assert (
        foreign_position(
            delivered(headers={"x-a": "1", "x-delivery-count": 2, "x-death": [{"count": 1}]}, timestamp=STAMP)
        )
        == base
    )
    others = [
        delivered(b'{"id": 2}', headers={"x-a": "1"}, timestamp=STAMP),
        delivered(headers={"x-a": "2"}, timestamp=STAMP),
        delivered(headers={"x-a": "1"}),
        delivered(exchange="other", headers={"x-a": "1"}, timestamp=STAMP),
    ]
    assert len({base, *(foreign_position(m) for m in others)}) == 5
    assert foreign_position(delivered(message_id="m-1", headers={"x-a": "1"})) == "m-1"


def test_a_message_without_message_id_has_that_id_as_an_event() -> None:
    incoming = delivered(headers={"x-a": "1"}, timestamp=STAMP, content_type="application/json")
    message = incoming_message(incoming)
    assert message.position == foreign_position(incoming)
    assert message.key == "orders"
    assert message.timestamp == STAMP
    assert dict(message.headers) == {"x-a": "1", "content-type": "application/json"}
    enveloped = incoming_message(delivered(headers={"ce_id": "e-1"}, correlation_id="c"))
    assert (enveloped.position, enveloped.key, dict(enveloped.headers)) == (None, None, {"ce_id": "e-1"})


def test_a_message_with_an_envelope_in_any_spelling_is_left_as_it_came() -> None:
    for headers, properties in (
        ({"CE_ID": "e-1"}, {}),
        ({"content-type": "application/cloudevents+json"}, {}),
    ):
        message = incoming_message(delivered(headers=headers, correlation_id="c", **properties))
        assert (message.position, message.key, dict(message.headers)) == (None, None, headers)
    structured = "application/cloudevents+json; charset=utf-8"
    message = incoming_message(delivered(headers={"x-a": "1"}, content_type=structured))
    assert (message.position, message.key) == (None, None)
    assert dict(message.headers) == {"x-a": "1", "content-type": structured}
