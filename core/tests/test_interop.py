"""Events from producers that are not this library: every CloudEvents attribute is kept."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from attrs import evolve

from dotmac.events import (
    ConsumerOptions,
    DecodeError,
    Event,
    EventBus,
    EventMetadata,
    JsonCodec,
    Message,
    ValidationError,
    create_bus,
)
from dotmac.events.codec import Codec
from dotmac.events.event import MAX_EXTENSION_NAME_LENGTH, RESERVED_EXTENSION_NAMES, FrozenDict, FrozenList
from dotmac.events.testing import Collector
from dotmac.events.wire import decode_message

CODEC = JsonCodec()


def decoder_for(content_type: str | None) -> Codec | None:
    return CODEC if content_type in (None, CODEC.content_type) else None


def foreign(headers: dict[str, str], value: bytes = b'{"a": 1}') -> Message:
    base = {"ce_specversion": "1.0", "ce_id": "e-1", "ce_type": "t", "ce_source": "/x"}
    base.update(headers)
    return Message(topic="t", value=value, headers=base)


# -- the attributes a foreign producer sets ------------------------------------------------
def test_subject_dataschema_and_extensions_reach_the_metadata() -> None:
    event = decode_message(
        foreign(
            {
                "ce_subject": "orders/7",
                "ce_dataschema": "https://schemas.example/order.json",
                "ce_traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "CE_Partitionkey": "7",
                "x-user": "kept",
            }
        ),
        decoder_for,
    )
    meta = event.metadata
    assert meta.subject == "orders/7"
    assert meta.data_schema == "https://schemas.example/order.json"
    assert dict(meta.extensions) == {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "partitionkey": "7",
    }
    assert dict(event.headers) == {"x-user": "kept"}


def test_an_event_without_foreign_attributes_has_none() -> None:
    event = decode_message(foreign({}), decoder_for)
    assert event.metadata.subject is None
    assert event.metadata.data_schema is None
    assert event.metadata.extensions == {}


def test_a_ce_header_that_is_not_an_attribute_name_is_a_decode_error() -> None:
    # CloudEvents names are a-z0-9 only; reading one as a user header would break the
    # rule that user headers never start with ce_, and dropping it would lose it.
    with pytest.raises(DecodeError, match="'ce_trace_id'.*not a CloudEvents attribute"):
        decode_message(foreign({"ce_trace_id": "1"}), decoder_for)


def test_a_ce_header_that_names_a_reserved_attribute_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="'ce_datacontenttype'"):
        decode_message(foreign({"ce_datacontenttype": "application/json"}), decoder_for)


# -- construction ----------------------------------------------------------------------------
def test_extensions_are_read_only_and_copied() -> None:
    given = {"region": "eu"}
    meta = EventMetadata(extensions=given)
    given["region"] = "us"
    assert meta.extensions == {"region": "eu"}
    assert isinstance(meta.extensions, FrozenDict)
    with pytest.raises(TypeError):
        meta.extensions["region"] = "us"  # type: ignore[index]


@pytest.mark.parametrize(
    ("extensions", "match"),
    [
        ({"Region": "eu"}, "'Region' must be 1 to .* lower-case"),
        ({"re-gion": "eu"}, "'re-gion' must be"),
        ({"": "eu"}, "'' must be"),
        ({"a" * (MAX_EXTENSION_NAME_LENGTH + 1): "x"}, "must be 1 to"),
        ({"subject": "x"}, "'subject' is a CloudEvents or envelope attribute"),
        ({"tenantid": "acme"}, "'acme' is a valid tenant id: set Event.tenant_id instead"),
        ({"region": 1}, r"metadata.extensions\['region'\]: must be a str"),
        ({"region": "a\nb"}, "must not contain CR, LF or NUL"),
        ({1: "x"}, "extension names must be str"),
        (["region"], "must be a mapping"),
    ],
)
def test_a_bad_extension_is_a_precise_validation_error(extensions: Any, match: str) -> None:
    with pytest.raises(ValidationError, match=match) as caught:
        EventMetadata(extensions=extensions)
    assert caught.value.field is not None
    assert caught.value.field.startswith("metadata.extensions")


def test_every_reserved_name_is_refused() -> None:
    for name in RESERVED_EXTENSION_NAMES:
        with pytest.raises(ValidationError):
            EventMetadata(extensions={name: "x"})


@pytest.mark.parametrize("field", ["subject", "data_schema"])
@pytest.mark.parametrize(("value", "match"), [("", "must not be empty"), ("a\rb", "CR, LF"), (3, "str")])
def test_a_bad_subject_or_dataschema_is_refused(field: str, value: Any, match: str) -> None:
    with pytest.raises(ValidationError, match=match) as caught:
        EventMetadata(**{field: value})
    assert caught.value.field == f"metadata.{field}"


def test_a_twenty_one_character_name_from_a_foreign_producer_is_kept() -> None:
    # Twenty is the spec's recommendation, not a limit; refusing would dead-letter.
    name = "a" * 21
    assert EventMetadata(extensions={name: "x"}).extensions == {name: "x"}


# -- written again on publish and forward -------------------------------------------------
META = EventMetadata(
    subject="orders/7",
    data_schema="urn:schema:order:1",
    extensions={"traceparent": "00-abc-def-01", "region": "eu"},
)


async def test_attributes_round_trip_through_publish(memory_url: str) -> None:
    async with create_bus(memory_url) as bus:
        message = bus.encode(Event(topic="t", payload={"a": 1}, metadata=META))
        assert message.headers["ce_subject"] == "orders/7"
        assert message.headers["ce_dataschema"] == "urn:schema:order:1"
        assert message.headers["ce_traceparent"] == "00-abc-def-01"
        assert message.headers["ce_region"] == "eu"
        back = bus._decode(message)
    for name in ("event_id", "occurred_at", "subject", "data_schema", "extensions"):
        assert getattr(back.metadata, name) == getattr(META, name)


async def read_until(bus: EventBus, topic: str, count: int, timeout: float = 5) -> list[Message]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        messages = await bus.transport.read(topic)
        if len(messages) >= count:
            return messages
        assert loop.time() < deadline, f"fewer than {count} messages on {topic}"
        await asyncio.sleep(0.01)


async def test_a_dead_letter_and_its_replay_keep_every_attribute(memory_url: str) -> None:
    async def fail(event: Event) -> None:
        raise RuntimeError("boom")

    async with create_bus(memory_url) as bus:
        await bus.subscribe("orders", fail, options=ConsumerOptions(max_retries=0))
        message = foreign({"ce_region": "eu", "ce_subject": "s", "ce_dataschema": "urn:d"})
        await bus.transport.publish([evolve(message, topic="orders")])
        letters = await read_until(bus, "orders.dlq", 1)
        letter = bus._decode(letters[0])
        seen = Collector()
        await bus.subscribe("orders", seen, group="replayed")
        replayed = await bus.dlq.replay("orders.dlq", all_groups=True)  # the failed one was broadcast
        await seen.wait_count(1, 5)
    assert letters[0].headers["ce_region"] == "eu"
    assert letter.metadata.extensions == {"region": "eu"}
    assert letter.metadata.subject == "s"
    assert letter.metadata.data_schema == "urn:d"
    assert replayed == 1
    assert seen.events[0].metadata.extensions == {"region": "eu"}
    assert seen.events[0].metadata.subject == "s"


# -- every valid binary-mode CloudEvent is read --------------------------------------------
@pytest.mark.parametrize(
    ("body", "payload"),
    [
        (b'[1, {"a": [2]}]', [1, {"a": [2]}]),
        (b'"text"', "text"),
        (b"42", 42),
        (b"1.5", 1.5),
        (b"true", True),
        (b"null", None),
        (b"", None),
    ],
)
async def test_json_data_that_is_not_an_object_is_the_payload(
    memory_url: str, body: bytes, payload: Any
) -> None:
    async with create_bus(memory_url) as bus:
        event = bus._decode(foreign({"content-type": "application/json"}, body))
        assert event.payload == payload
        # Published again it is the same data (JSON null and no data are both None,
        # written as no data).
        again = bus.encode(event)
        assert bus._decode(again).payload == payload
        assert again.value == (b"" if payload is None else body.replace(b" ", b""))


def test_a_non_object_payload_is_read_only() -> None:
    event = Event(topic="t", payload=[1, {"a": [2]}])
    assert isinstance(event.payload, FrozenList)
    with pytest.raises(TypeError):
        event.payload.append(3)
    with pytest.raises(TypeError):
        event.payload[1]["a"] = 1
    assert Event(topic="t", payload=(1, 2)).payload == [1, 2]
    assert Event(topic="t").payload == {}


@pytest.mark.parametrize(
    "content_type", ["application/vnd.acme+json", "application/problem+json; charset=utf-8"]
)
async def test_a_json_suffix_content_type_is_read_as_json(memory_url: str, content_type: str) -> None:
    async with create_bus(memory_url) as bus:
        event = bus._decode(foreign({"content-type": content_type}, b'{"a": 1}'))
    assert event.payload == {"a": 1}
    assert event.metadata.content_type == content_type


async def test_an_unknown_content_type_without_json_suffix_is_still_refused(memory_url: str) -> None:
    async with create_bus(memory_url) as bus:
        with pytest.raises(DecodeError, match="no installed codec reads content type 'application/vnd.acme'"):
            bus._decode(foreign({"content-type": "application/vnd.acme"}, b'{"a": 1}'))


@pytest.mark.parametrize("tenant", ["acme.eu", "a/b", "x" * 65])
async def test_a_foreign_tenantid_that_is_no_tenant_travels_as_an_extension(
    memory_url: str, tenant: str
) -> None:
    async with create_bus(memory_url) as bus:
        event = bus._decode(foreign({"ce_tenantid": tenant}))
        assert event.tenant_id is None
        assert event.metadata.extensions == {"tenantid": tenant}
        again = bus.encode(event)
    assert again.headers["ce_tenantid"] == tenant


def test_a_valid_tenantid_is_the_tenant() -> None:
    event = decode_message(foreign({"ce_tenantid": "acme"}), decoder_for)
    assert event.tenant_id == "acme"
    assert event.metadata.extensions == {}


def test_a_tenant_and_a_tenantid_extension_together_are_refused() -> None:
    with pytest.raises(ValidationError, match="keep one") as caught:
        Event(topic="t", tenant_id="acme", metadata=EventMetadata(extensions={"tenantid": "acme.eu"}))
    assert caught.value.field == "tenant_id"


async def test_non_object_events_reach_a_subscriber_and_the_dead_letter_topic(memory_url: str) -> None:
    seen = Collector()

    async def reject_lists(event: Event) -> None:
        if isinstance(event.payload, list):
            raise RuntimeError("no lists here")
        await seen(event)

    async with create_bus(memory_url) as bus:
        await bus.subscribe("orders", reject_lists, options=ConsumerOptions(max_retries=0))
        await bus.transport.publish(
            [
                evolve(foreign({"ce_id": "scalar"}, b"7"), topic="orders"),
                evolve(foreign({"ce_id": "empty"}, b""), topic="orders"),
                evolve(foreign({"ce_id": "list"}, b"[1]"), topic="orders"),
            ]
        )
        await seen.wait_count(2, 5)
        letters = await read_until(bus, "orders.dlq", 1)
    assert [(e.event_id, e.payload) for e in seen.events] == [("scalar", 7), ("empty", None)]
    assert letters[0].headers["ce_id"] == "list"
    assert letters[0].value == b"[1]"


def test_every_cell_of_the_interop_matrix_names_a_test_that_exists() -> None:
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    text = (root / "docs" / "wire-format.md").read_text()
    block = text.split("<!-- interop-tests -->", 1)[1].split("<!-- /interop-tests -->", 1)[0]
    entries = re.findall(r"^- ([\w, ]+): `([^`]+)` `(\w+)`$", block, re.MULTILINE)
    cells = {cell.strip() for names, _, _ in entries for cell in names.split(",")}
    matrix = text.split("## Interop matrix", 1)[1].split("<!-- interop-tests -->", 1)[0]
    assert set(re.findall(r"\[(\w+)\]", matrix)) == cells
    for _, path, name in entries:
        source = (root / path).read_text()
        assert re.search(rf"^\s*(async )?def {name}\(", source, re.MULTILINE), f"{path} has no {name}"
