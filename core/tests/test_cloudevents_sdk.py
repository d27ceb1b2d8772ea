"""Round trips against the official CloudEvents SDK, binary and structured content mode.

The SDK's Kafka binding gives headers and a value; here they travel through the
memory transport. The Kafka and Redis plugins run the same cases on real brokers.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

cloudevents = pytest.importorskip("cloudevents.core.bindings.kafka")

from cloudevents.core.bindings.kafka import (  # noqa: E402
    KafkaMessage,
    from_binary,
    from_structured,
    to_binary,
    to_structured,
)
from cloudevents.core.formats.json import JSONFormat  # noqa: E402
from cloudevents.core.v1.event import CloudEvent  # noqa: E402

from dotmac.events import ConfigurationError, DecodeError, Event, Message, create_bus  # noqa: E402
from dotmac.events.testing import Collector  # noqa: E402
from dotmac.events.testing.cloudevents_sdk import SDK_ATTRIBUTES, SDK_TIME, our_event  # noqa: E402

TIME = SDK_TIME
# The shared sample, plus a tenant id that cannot key a namespace.
ATTRIBUTES: dict[str, Any] = {**SDK_ATTRIBUTES, "tenantid": "acme.eu"}
del ATTRIBUTES["partitionkey"]


def sdk_event(data: Any = None, **overrides: Any) -> CloudEvent:
    attributes = {**ATTRIBUTES, **overrides}
    return CloudEvent(attributes, {"id": 7, "items": [1, 2]} if data is None else data)


def as_message(topic: str, record: KafkaMessage) -> Message:
    key = record.key.decode() if isinstance(record.key, bytes) else record.key
    headers = {name: value.decode() for name, value in record.headers.items()}
    return Message(topic=topic, value=record.value, key=key, headers=headers)


def as_record(message: Message) -> KafkaMessage:
    headers = {name: value.encode() for name, value in message.headers.items()}
    return KafkaMessage(headers=headers, key=message.key, value=message.value)


def check_read(event: Event, data: Any) -> None:
    meta = event.metadata
    assert event.payload == data
    assert meta.event_id == "sdk-1"
    assert meta.event_type == "com.example.order.created"
    assert meta.source == "/orders/eu"
    assert meta.occurred_at == TIME
    assert meta.subject == "order/7"
    assert meta.data_schema == "https://schemas.example/order/1.json"
    assert meta.content_type == "application/json"
    assert event.tenant_id is None  # acme.eu cannot key a namespace; kept below
    assert meta.extensions == {
        "traceparent": ATTRIBUTES["traceparent"],
        "region": "eu",
        "tenantid": "acme.eu",
        "partitionkey": "7",
    }
    assert event.key == "7"


@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_an_sdk_event_is_read_with_every_attribute(memory_url: str, mode: str) -> None:
    data = {"id": 7, "items": [1, 2]}
    writer = to_binary if mode == "binary" else to_structured
    record = writer(sdk_event(data, partitionkey="7"), JSONFormat())
    seen = Collector()
    async with create_bus(memory_url) as bus:
        await bus.subscribe("orders", seen)
        await bus.transport.publish([as_message("orders", record)])
        await seen.wait_count(1, 5)
    check_read(seen.events[0], data)


@pytest.mark.parametrize("mode", ["binary", "structured"])
@pytest.mark.parametrize("data", [[1, "two"], "text", 3, None])
async def test_sdk_data_that_is_not_an_object_is_read(memory_url: str, mode: str, data: Any) -> None:
    writer = to_binary if mode == "binary" else to_structured
    # In binary mode the SDK writes only dicts as JSON and str data as it is, so a
    # producer sends other JSON values as their text.
    sent = json.dumps(data) if mode == "binary" and data is not None else data
    event = CloudEvent({**ATTRIBUTES}, sent)
    async with create_bus(memory_url) as bus:
        read = bus._decode(as_message("orders", writer(event, JSONFormat())))
    assert read.payload == data


@pytest.mark.parametrize("read_mode", ["binary", "structured"])
@pytest.mark.parametrize("write_mode", ["binary", "structured"])
async def test_an_event_read_from_the_sdk_is_forwarded_unchanged(
    memory_url: str, read_mode: str, write_mode: str
) -> None:
    data = {"id": 7}
    writer = to_binary if read_mode == "binary" else to_structured
    original = sdk_event(data, partitionkey="7")
    async with create_bus(memory_url, content_mode=write_mode) as bus:
        event = bus._decode(as_message("orders", writer(original, JSONFormat())))
        forwarded = bus.encode(event)
    reader = from_binary if write_mode == "binary" else from_structured
    back = reader(as_record(forwarded), JSONFormat())
    assert back.get_attributes() == original.get_attributes()
    assert back.get_data() == data


@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_the_sdk_reads_what_the_bus_writes(memory_url: str, mode: str) -> None:
    event, expected = our_event("orders")
    event = event.with_headers(**{"x-user": "u"})
    async with create_bus(memory_url, source="/billing", topic_modes={"orders": mode}) as bus:
        message = bus.encode(event)
    reader = from_binary if mode == "binary" else from_structured
    back = reader(as_record(message), JSONFormat())
    assert back.get_attributes() == {**expected, "source": "/billing"}
    assert back.get_data() == {"id": 7}
    if mode == "structured":
        assert message.headers == {"x-user": "u", "content-type": "application/cloudevents+json"}


async def test_structured_mode_per_topic_leaves_other_topics_binary(memory_url: str) -> None:
    async with create_bus(memory_url, topic_modes={"orders": "structured"}) as bus:
        structured = bus.encode(Event(topic="orders", payload={"a": 1}))
        binary = bus.encode(Event(topic="other", payload={"a": 1}))
        assert bus._decode(structured).payload == bus._decode(binary).payload == {"a": 1}
    assert structured.headers["content-type"] == "application/cloudevents+json"
    assert binary.headers["content-type"] == "application/json"
    assert binary.value == b'{"a":1}'


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"content_mode": "batch"}, "content_mode must be one of 'binary', 'structured'"),
        ({"topic_modes": {"orders": "text"}}, r"topic_modes\['orders'\] must be one of"),
    ],
)
def test_an_unknown_content_mode_is_a_configuration_error(memory_url: str, kwargs: Any, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        create_bus(memory_url, **kwargs)


def structured(document: bytes, **headers: str) -> Message:
    return Message(
        topic="t", value=document, headers={"content-type": "application/cloudevents+json", **headers}
    )


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (structured(b"[1]"), "is a JSON list, not an object"),
        (structured(b"{nope"), "is not valid JSON"),
        (structured(b'{"id": "1"}'), "has no specversion"),
        (structured(b'{"specversion": "0.3", "id": "1"}'), "only '1.0' is read"),
        (structured(b'{"specversion": "1.0", "id": 5}'), "attribute 'id' is a int"),
        (structured(b'{"specversion": "1.0", "id": "1", "data": 1, "data_base64": "AA=="}'), "both data"),
        (structured(b'{"specversion": "1.0", "id": "1", "data_base64": "%%"}'), "not base64"),
        (structured(b'{"specversion": "1.0", "id": "1"}', ce_id="2"), "ambiguous envelope: 'ce_id'"),
        (
            Message(topic="t", value=b"[]", headers={"content-type": "application/cloudevents-batch+json"}),
            "batched mode is not read",
        ),
    ],
)
async def test_a_bad_structured_event_is_a_precise_decode_error(
    memory_url: str, message: Message, match: str
) -> None:
    async with create_bus(memory_url) as bus:
        with pytest.raises(DecodeError, match=match):
            bus._decode(message)


async def test_structured_extensions_that_are_numbers_or_booleans_read_as_their_text(memory_url: str) -> None:
    document = b'{"specversion":"1.0","id":"1","type":"t","source":"s","count":3,"flag":true,"data":{}}'
    async with create_bus(memory_url) as bus:
        event = bus._decode(structured(document))
    assert event.metadata.extensions == {"count": "3", "flag": "true"}


async def test_structured_base64_data_is_read_by_the_codec_of_its_type(memory_url: str) -> None:
    document = (
        b'{"specversion":"1.0","id":"1","datacontenttype":"application/json","data_base64":"eyJhIjoxfQ=="}'
    )
    async with create_bus(memory_url) as bus:
        event = bus._decode(structured(document))
    assert event.payload == {"a": 1}
