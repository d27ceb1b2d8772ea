"""The codec inside the bus, on the memory transport (plugins/memory must be installed)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import dotmac.events
from dotmac.events import ConsumerOptions, Event, EventBus, EventMetadata, Message, create_bus
from dotmac.events.errors import EncodeError
from dotmac.events.plugins import get_registry
from dotmac.events.testing import Collector, wait_for
from dotmac_events_avro import (
    AvroCodec,
    AvroValidationError,
    InMemorySchemaRegistry,
    default_registry,
    frame,
    set_default_registry,
)

TIMEOUT = 5.0

pytestmark = pytest.mark.usefixtures("fresh_default_registry")


@pytest.fixture
def fresh_default_registry() -> Iterator[InMemorySchemaRegistry]:
    registry = InMemorySchemaRegistry()
    set_default_registry(registry)
    try:
        yield registry
    finally:
        set_default_registry(None)


@contextlib.asynccontextmanager
async def buses(*specs: dict[str, Any]) -> AsyncIterator[list[EventBus]]:
    async with contextlib.AsyncExitStack() as stack:
        opened = []
        for spec in specs:
            bus = create_bus(**spec)
            await stack.enter_async_context(bus)
            opened.append(bus)
        yield opened


def headers_for(topic: str, event_id: str) -> dict[str, str]:
    return {
        "ce_id": event_id,
        "ce_specversion": "1.0",
        "ce_type": topic,
        "ce_source": "test",
        "content-type": "application/avro",
    }


# -- the plugin -------------------------------------------------------------------------------


def test_the_plugin_registers_the_codec() -> None:
    spec = get_registry().codec("avro")
    assert spec.content_type == "application/avro"
    assert spec.factory is AvroCodec
    assert get_registry().codecs_by_type["application/avro"] is spec
    assert dotmac.events.AvroCodec is AvroCodec


# -- round trips ------------------------------------------------------------------------------


async def test_round_trip_with_the_codec_selected_by_name(memory_url: str, orders: SimpleNamespace) -> None:
    avro = {"target": memory_url, "codec": "avro", "codec_options": {"schemas": {"orders": orders.v1}}}
    async with buses(avro, {"target": memory_url}) as (producer, consumer):
        seen = Collector()
        await consumer.subscribe("orders", seen)
        sent = Event(
            topic="orders",
            payload={"id": 1, "customer": "Zoë", "note": "first"},
            key="1",
            headers={"x-trace": "t-1"},
            tenant_id="acme",
            metadata=EventMetadata(event_type="order.created", correlation_id="c-1"),
        )
        await producer.publish(sent)
        await seen.wait_count(1, TIMEOUT)
        got = seen.events[0]
        # The consumer bus uses JSON by default: it picked Avro by the content type,
        # with a codec built without options, on the process-wide default registry.
        assert got.payload == sent.payload
        assert got.metadata.content_type == "application/avro"
        assert (got.key, dict(got.headers), got.tenant_id) == ("1", {"x-trace": "t-1"}, "acme")
        assert (got.event_id, got.metadata.correlation_id) == (sent.event_id, "c-1")
        assert default_registry().subjects() == ["orders-value"]


async def test_a_configured_codec_instance_on_both_sides(memory_url: str, orders: SimpleNamespace) -> None:
    registry = InMemorySchemaRegistry()  # private: the consumer must be given the same registry
    producer_codec = AvroCodec(schemas={"orders": orders.v1}, registry=registry)
    consumer_codec = AvroCodec(schemas={"orders": orders.v2}, registry=registry)
    async with buses(
        {"target": memory_url, "codec": producer_codec}, {"target": memory_url, "codec": consumer_codec}
    ) as (producer, consumer):
        seen = Collector()
        await consumer.subscribe("orders", seen, group="billing")
        await producer.publish_many(
            [Event(topic="orders", payload={"id": i, "customer": "c", "note": "x"}) for i in range(3)]
        )
        await seen.wait_count(3, TIMEOUT)
        # Evolution through the bus: the v2 reader sees the default of its new field.
        assert [e.payload for e in seen.events] == [
            {"id": i, "customer": "c", "currency": "EUR"} for i in range(3)
        ]


async def test_dict_config_with_an_avsc_file(
    memory_url: str, orders: SimpleNamespace, tmp_path: Path
) -> None:
    path = tmp_path / "order.avsc"
    path.write_text(json.dumps(orders.v1), encoding="utf-8")
    config = {
        "url": memory_url,
        "bus": {"codec": "avro", "codec_options": {"schemas": {"orders.*": str(path)}, "strict": True}},
    }
    async with buses({"target": config}) as (bus,):
        seen = Collector()
        await bus.subscribe("orders.eu", seen)
        await bus.publish(Event(topic="orders.eu", payload={"id": 9, "customer": "c"}))
        await seen.wait_count(1, TIMEOUT)
        assert seen.events[0].payload == {"id": 9, "customer": "c", "note": None}


async def test_json_and_avro_events_share_a_topic(memory_url: str, orders: SimpleNamespace) -> None:
    avro = AvroCodec(schemas={"orders": orders.v1})
    async with buses(
        {"target": memory_url},  # JSON
        {"target": memory_url, "codec": avro},
        {"target": memory_url},  # a consumer that was told nothing about Avro
    ) as (json_producer, avro_producer, consumer):
        seen = Collector()
        await consumer.subscribe("orders", seen)
        await json_producer.publish(Event(topic="orders", payload={"id": 1, "legacy": True}))
        await avro_producer.publish(Event(topic="orders", payload={"id": 2, "customer": "c"}))
        await json_producer.publish(Event(topic="orders", payload={"id": 3, "legacy": True}))
        await seen.wait_count(3, TIMEOUT)
        assert [(e.payload, e.metadata.content_type) for e in seen.events] == [
            ({"id": 1, "legacy": True}, "application/json"),
            ({"id": 2, "customer": "c", "note": None}, "application/avro"),
            ({"id": 3, "legacy": True}, "application/json"),
        ]


async def test_avro_for_one_topic_only(memory_url: str, orders: SimpleNamespace) -> None:
    avro = AvroCodec(schemas={"orders": orders.v1})
    async with buses({"target": memory_url, "topic_codecs": {"orders": avro}}) as (bus,):
        seen = Collector()
        await bus.subscribe(["orders", "audit"], seen)
        await bus.publish(Event(topic="orders", payload={"id": 1, "customer": "c"}))
        await bus.publish(Event(topic="audit", payload={"anything": ["goes"]}))
        await seen.wait_count(2, TIMEOUT)
        types = {e.topic: e.metadata.content_type for e in seen.events}
        assert types == {"orders": "application/avro", "audit": "application/json"}


async def test_request_reply_in_avro(memory_url: str) -> None:
    question = {"type": "record", "name": "Quote", "fields": [{"name": "qty", "type": "int"}]}
    answer = {"type": "record", "name": "Price", "fields": [{"name": "cents", "type": "long"}]}
    codec = AvroCodec(schemas={"rpc.quote": question, "dotmac.reply.*": answer})
    async with buses({"target": memory_url, "codec": codec}, {"target": memory_url, "codec": codec}) as (
        server,
        client,
    ):

        async def quote(event: Event) -> dict[str, Any]:
            return {"cents": event.payload["qty"] * 250}

        await server.subscribe("rpc.quote", quote)
        reply = await client.request(Event(topic="rpc.quote", payload={"qty": 4}), timeout=TIMEOUT)
        assert reply.payload == {"cents": 1000}
        assert reply.metadata.content_type == "application/avro"


# -- bad input never leaves -------------------------------------------------------------------


async def test_invalid_payload_fails_before_anything_is_sent(
    memory_url: str, orders: SimpleNamespace
) -> None:
    avro = AvroCodec(schemas={"orders": orders.v1})
    async with buses({"target": memory_url, "codec": avro}) as (bus,):
        seen = Collector()
        await bus.subscribe("orders", seen)
        with pytest.raises(AvroValidationError) as info:
            await bus.publish(Event(topic="orders", payload={"id": "seven", "customer": "c"}))
        assert info.value.field == "payload['id']"
        assert info.value.expected == "long"
        with pytest.raises(EncodeError):
            await bus.publish_many(
                [
                    Event(topic="orders", payload={"id": 1, "customer": "c"}),
                    Event(topic="orders", payload={"id": 2}),  # missing customer
                ]
            )
        await bus.publish(Event(topic="orders", payload={"id": 3, "customer": "c"}))
        await seen.wait_count(1, TIMEOUT)
        assert seen.payloads("id") == [3]  # neither the bad event nor its batch got out
        stored = await bus.transport.read("orders")
        assert [m.headers["content-type"] for m in stored] == ["application/avro"]  # only the good one


# -- bad bytes are dead-lettered, the consumer keeps going -------------------------------------


async def test_undecodable_messages_are_dead_lettered_with_the_reason(
    memory_url: str, orders: SimpleNamespace
) -> None:
    registry = InMemorySchemaRegistry()
    producer_codec = AvroCodec(schemas={"orders": orders.v1}, registry=registry)
    consumer_codec = AvroCodec(schemas={"orders": orders.v2}, registry=registry)
    good = producer_codec.encode(Event(topic="orders", payload={"id": 1, "customer": "c", "note": "n"}))
    # Another service's Order, where `id` is a string: the consumer's v2 reader needs a long.
    other = dict(orders.v1, fields=[{"name": "id", "type": "string"}, {"name": "customer", "type": "string"}])
    other_codec = AvroCodec(
        schemas={"orders": other}, registry=registry, subject_strategy=lambda t, r: "other"
    )
    incompatible_bytes = other_codec.encode(Event(topic="orders", payload={"id": "A-1", "customer": "c"}))
    bad = {
        "truncated": good[:3],
        "short-body": good[:-4],
        "wrong-magic": b"\x01" + good[1:],
        "unknown-id": frame(999, good[5:]),
        "trailing": good + b"\x00",
        "incompatible": incompatible_bytes,
    }
    reasons = {
        "truncated": "truncated message: 3 bytes",
        "short-body": "not valid Avro for schema id 1",
        "wrong-magic": "wrong magic byte 0x01",
        "unknown-id": "unknown schema id 999",
        "trailing": "1 bytes after the Avro record",
        "incompatible": "cannot read: com.acme.Order.id: the reader expects long, the writer wrote string",
    }
    async with buses({"target": memory_url, "codec": consumer_codec}) as (consumer,):
        seen = Collector()
        sub = await consumer.subscribe("orders", seen, group="g", options=ConsumerOptions(max_retries=0))
        await consumer.transport.publish(
            [
                Message(topic="orders", value=value, key=name, headers=headers_for("orders", name))
                for name, value in bad.items()
            ]
        )
        await consumer.transport.publish(
            [Message(topic="orders", value=good, headers=headers_for("orders", "good"))]
        )
        await seen.wait_count(1, TIMEOUT)
        await wait_for(lambda: sub.dead_lettered == len(bad), TIMEOUT, what="every dead letter")
        assert seen.events[0].payload == {"id": 1, "customer": "c", "currency": "EUR"}
        letters = {dl.event_id: dl for dl in await consumer.dlq.list("orders.dlq")}
        assert set(letters) == set(bad)
        for name, letter in letters.items():
            assert letter.message.value == bad[name]  # the bytes, unchanged
            assert letter.reason == "decode"
            assert letter.error_type == "DecodeError"
            assert reasons[name] in (letter.error_message or ""), name
            assert letter.original_topic == "orders"
        # Still consuming after all that.
        await consumer.publish(Event(topic="orders", payload={"id": 2, "customer": "d"}))
        await seen.wait_count(2, TIMEOUT)
