"""The official CloudEvents SDK's events on RabbitMQ, and the key beside the
``partitionkey`` extension.

The bus carries the Kafka binding's names as AMQP headers (``ce_*``, ``content-type``)
and the key in ``ce_partitionkey``, which is also the CloudEvents ``partitionkey``
extension: on RabbitMQ the two are one attribute.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from attrs import evolve

from dotmac.events import EventBus, EventMetadata, JsonCodec, Message, ValidationError, create_bus
from dotmac.events.event import Event
from dotmac.events.testing import Collector
from dotmac.events.testing.cloudevents_sdk import SDK_ATTRIBUTES, check_sdk_event, read_record, sdk_record
from dotmac.events.wire import decode_message
from dotmac_events_rabbitmq import KEY_HEADER, RabbitMQTransport

pytest.importorskip("cloudevents.core.bindings.kafka")
pytestmark = pytest.mark.timeout(60)


def topic(name: str) -> str:
    return f"rmq.{name}.{uuid.uuid4().hex[:8]}"


@contextlib.asynccontextmanager
async def plain(url: str, bus: EventBus, listen: str) -> AsyncIterator[tuple[Any, Any]]:
    """A plain aio-pika client: the bus's exchange, and a queue of its own bound to ``listen``."""
    transport = bus.transport
    assert isinstance(transport, RabbitMQTransport)
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(transport.config.exchange)
        queue = await channel.declare_queue(f"plain-{uuid.uuid4().hex[:8]}", exclusive=True)
        await queue.bind(exchange, routing_key=listen)
        yield exchange, queue


@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_an_sdk_message_is_consumed_with_every_attribute(rabbitmq_url: str, mode: str) -> None:
    record = sdk_record(mode)
    headers: dict[str, Any] = {name: value.decode() for name, value in record.headers.items()}
    headers[KEY_HEADER] = record.key
    name = topic("sdk")
    seen = Collector()
    async with create_bus(rabbitmq_url) as bus:
        await bus.subscribe(name, seen, group="g")
        async with plain(rabbitmq_url, bus, name) as (exchange, _):
            await exchange.publish(aio_pika.Message(record.value, headers=headers), routing_key=name)
            await seen.wait_count(1, 10)
    event = seen.events[0]
    if mode == "structured":
        check_sdk_event(event)  # the extension is in the body, the key in the header
        return
    # Binary mode: the SDK's ce_partitionkey header is the key, not an extension as well.
    assert event.key == "7"
    assert event.metadata.extensions == {"traceparent": SDK_ATTRIBUTES["traceparent"], "region": "eu"}
    assert (event.metadata.event_id, event.metadata.subject, event.payload) == ("sdk-1", "order/7", {"id": 7})


async def test_an_sdk_event_forwarded_to_rabbitmq_has_one_partitionkey(rabbitmq_url: str) -> None:
    """An SDK event read elsewhere (key "7" and the extension partitionkey "7") goes out
    with one ce_partitionkey header, which the SDK reads back as partitionkey."""
    record = sdk_record("binary")
    headers = {name: value.decode() for name, value in record.headers.items()}
    codec = JsonCodec()
    received = decode_message(
        Message("elsewhere", record.value, record.key, headers),
        lambda ct: codec if ct in (None, codec.content_type) else None,
    )
    assert (received.key, received.metadata.extensions["partitionkey"]) == ("7", "7")
    name = topic("forward")
    async with create_bus(rabbitmq_url) as bus, plain(rabbitmq_url, bus, name) as (_, queue):
        await bus.publish(evolve(received, topic=name))
        raw = await queue.get(timeout=5)
        await raw.ack()
    assert raw.headers is not None
    assert [n for n in raw.headers if n.lower() == KEY_HEADER] == [KEY_HEADER]
    assert raw.headers[KEY_HEADER] == "7"
    back = read_record("binary", {n: str(v).encode() for n, v in raw.headers.items()}, None, raw.body)
    assert back.get_attributes()["partitionkey"] == "7"
    assert back.get_attributes()["id"] == "sdk-1"


async def test_a_partitionkey_extension_travels_once_as_the_key(rabbitmq_url: str) -> None:
    name = topic("pk")
    seen = Collector()
    async with create_bus(rabbitmq_url) as bus, plain(rabbitmq_url, bus, name) as (_, queue):
        await bus.subscribe(name, seen, group="g")
        same = Event(
            topic=name, payload={}, key="7", metadata=EventMetadata(extensions={"partitionkey": "7"})
        )
        alone = Event(topic=name, payload={}, metadata=EventMetadata(extensions={"partitionkey": "8"}))
        await bus.publish(same)
        await bus.publish(alone)
        with pytest.raises(ValidationError, match="partitionkey extension '9'"):
            await bus.publish(evolve(same, key="a", metadata=EventMetadata(extensions={"partitionkey": "9"})))
        await seen.wait_count(2, 10)
        raw = [await queue.get(timeout=5), await queue.get(timeout=5)]
        assert await queue.get(fail=False) is None  # the refused one was not sent
    assert [m.headers[KEY_HEADER] for m in raw] == ["7", "8"]
    assert [list(m.headers).count(KEY_HEADER) for m in raw] == [1, 1]
    assert [(e.key, dict(e.metadata.extensions)) for e in seen.events] == [("7", {}), ("8", {})]
