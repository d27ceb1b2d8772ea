"""ConsumerOptions(intake="foreign"): records with no envelope are events too."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest
from attrs import evolve

from dotmac.events import (
    ConfigurationError,
    ConsumerOptions,
    DecodeError,
    Event,
    Message,
    RawCodec,
    create_bus,
)
from dotmac.events.codec import Codec, JsonCodec
from dotmac.events.testing import Collector, wait_dead_letters
from dotmac.events.wire import FieldsMessage, decode_foreign, decode_message, foreign_event_id, foreign_onward

JSON = JsonCodec()
FOREIGN = ConsumerOptions(intake="foreign", max_retries=1)


def decoder_for(content_type: str | None) -> Codec | None:
    return {None: JSON, "application/json": JSON, "application/octet-stream": RawCodec()}.get(content_type)


def record(value: bytes = b'{"a": 1}', **kwargs: object) -> Message:
    kwargs.setdefault("position", "0:42")
    return Message(topic="orders", value=value, **kwargs)  # type: ignore[arg-type]


def test_a_record_without_envelope_becomes_an_event() -> None:
    stamp = datetime(2026, 12, 1, 3, 0, tzinfo=timezone.utc)
    message = record(key="k-1", headers={"x-origin": "connect"}, timestamp=stamp)
    event = decode_foreign(message, decoder_for, lambda topic: JSON)
    assert event.event_id == "orders:0:42"
    assert event.payload == {"a": 1}
    assert event.key == "k-1"
    assert dict(event.headers) == {"x-origin": "connect"}
    assert event.metadata.occurred_at == stamp
    assert event.metadata.content_type == "application/json"
    assert event.metadata.source is None and event.tenant_id is None


def test_the_id_is_the_same_for_the_same_record_and_differs_between_records() -> None:
    first = decode_foreign(record(), decoder_for, lambda t: JSON)
    again = decode_foreign(record(), decoder_for, lambda t: JSON)
    other = decode_foreign(record(position="0:43"), decoder_for, lambda t: JSON)
    assert first.event_id == again.event_id != other.event_id


def test_a_long_topic_gets_a_uuid_id_of_the_same_record() -> None:
    topic = "t" * 249
    ident = foreign_event_id(topic, "0:123456789")
    assert len(ident) == 36
    assert ident == foreign_event_id(topic, "0:123456789") != foreign_event_id(topic, "0:123456780")


def test_the_content_type_header_picks_the_codec_and_the_topic_codec_is_the_fallback() -> None:
    raw = decode_foreign(
        record(b"\x00\x01", headers={"content-type": "application/octet-stream"}), decoder_for, lambda t: JSON
    )
    assert raw.payload == b"\x00\x01"
    fallback = decode_foreign(record(b"\x00\x01"), decoder_for, lambda t: RawCodec())
    assert fallback.payload == b"\x00\x01"
    assert fallback.metadata.content_type == "application/octet-stream"


def test_a_record_with_an_envelope_is_read_as_usual() -> None:
    message = record(headers={"ce_id": "e-1", "ce_type": "t", "content-type": "application/json"})
    assert decode_foreign(message, decoder_for, lambda t: JSON).event_id == "e-1"


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (record(position=None), "no position to derive an id from"),
        (record(headers={"ce_type": "t"}), r"envelope attributes \(ce_type\) but no ce_id"),
        (record(b"{nope"), "not valid JSON"),
        (record(headers={"content-type": "application/x-nothing"}), "no installed codec reads"),
        (record(headers={"bad name": "x"}), "not a token"),
    ],
)
def test_what_cannot_be_an_event_is_a_decode_error(message: Message, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        decode_foreign(message, decoder_for, lambda t: JSON)


def test_intake_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="intake must be 'cloudevents' or 'foreign'"):
        ConsumerOptions(intake="plain")  # type: ignore[arg-type]


async def test_foreign_records_get_retries_and_dead_letters(memory_url: str) -> None:
    calls: dict[str, int] = {}

    def fail_once(event: Event, count: int) -> BaseException | None:
        calls[event.event_id] = count
        return RuntimeError("first call fails") if count == 1 else None

    seen = Collector(fail=fail_once)
    async with create_bus(memory_url) as bus:
        await bus.subscribe("orders", seen, options=FOREIGN)
        await bus.transport.publish(
            [
                Message(topic="orders", value=b'{"n": 1}', key="a"),
                Message(topic="orders", value=b"[1, 2]", headers={"x-src": "plain"}),
                Message(topic="orders", value=b"{not json"),
            ]
        )
        await seen.wait_count(2, 5)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not (letters := await bus.dlq.list("orders.dlq")):
            assert loop.time() < deadline, "no dead letter"
            await asyncio.sleep(0.01)
    assert [e.payload for e in seen.events] == [{"n": 1}, [1, 2]]
    assert all(count == 2 for count in calls.values())
    assert [e.event_id for e in seen.events] == list(calls)
    assert seen.events[0].key == "a"
    assert dict(seen.events[1].headers) == {"x-src": "plain"}
    assert letters[0].message.value == b"{not json"
    assert letters[0].message.headers["x-dlq-reason"] == "decode"
    record = letters[0].as_record(detail=True)  # what the ops page shows
    assert (record["payload"], record["raw"], record["reason"]) == (None, "{not json", "decode")
    assert record["headers"]["x-dlq-reason"] == "decode"
    assert "headers" not in letters[0].as_record() and "raw" not in letters[0].as_record()


async def test_the_default_intake_still_dead_letters_a_record_without_envelope(memory_url: str) -> None:
    seen = Collector()
    async with create_bus(memory_url) as bus:
        await bus.subscribe("orders", seen, options=ConsumerOptions(max_retries=0))
        await bus.transport.publish([Message(topic="orders", value=b'{"n": 1}')])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not (letters := await bus.dlq.list("orders.dlq")):
            assert loop.time() < deadline, "no dead letter"
            await asyncio.sleep(0.01)
    assert seen.events == []
    assert "no ce_id" in letters[0].message.headers["x-dlq-error-message"]


async def test_the_raw_codec_publishes_bytes_and_refuses_anything_else(memory_url: str) -> None:
    from dotmac.events import EncodeError

    async with create_bus(memory_url, codec="raw") as bus:
        message = bus.encode(Event(topic="blobs", payload=b"\x89PNG"))
        assert message.value == b"\x89PNG"
        assert bus._decode(message).payload == b"\x89PNG"
        with pytest.raises(EncodeError, match="writes bytes payloads"):
            bus.encode(Event(topic="blobs", payload={"a": 1}))


async def test_plain_bytes_records_are_raw_events(memory_url: str) -> None:
    seen = Collector()
    async with create_bus(memory_url, topic_codecs={"blobs": "raw"}) as bus:
        await bus.subscribe("blobs", seen, options=FOREIGN)
        await bus.transport.publish([Message(topic="blobs", value=b"\x00\xffbinary", key="k")])
        await seen.wait_count(1, 5)
    event = seen.events[0]
    assert event.payload == b"\x00\xffbinary"
    assert event.key == "k"
    assert event.event_id.startswith("blobs:")
    assert event.metadata.content_type == "application/octet-stream"


# -- records whose fields are the data (FieldsMessage) --------------------------------------
def fields(headers: dict[str, str], **kwargs: object) -> FieldsMessage:
    kwargs.setdefault("position", "1764558000000-0")
    return FieldsMessage(topic="orders", value=b"", headers=headers, **kwargs)  # type: ignore[arg-type]


def test_a_record_of_fields_has_them_as_its_payload() -> None:
    stamp = datetime(2026, 12, 1, 3, 0, tzinfo=timezone.utc)
    event = decode_foreign(
        fields({"id": "7", "status": "new", "content-type": "x"}, key="k", timestamp=stamp),
        decoder_for,
        lambda t: JSON,
    )
    assert event.payload == {"id": "7", "status": "new", "content-type": "x"}
    assert event.key == "k"
    assert dict(event.headers) == {}
    assert event.event_id == "orders:1764558000000-0"
    assert event.metadata.occurred_at == stamp
    assert event.metadata.content_type is None


def test_a_record_of_fields_is_refused_like_headers() -> None:
    with pytest.raises(DecodeError, match="not valid UTF-8"):
        decode_foreign(fields({"id": "7\udcff"}), decoder_for, lambda t: JSON)
    with pytest.raises(DecodeError, match="envelope attributes"):
        decode_foreign(fields({"ce_type": "t", "id": "7"}), decoder_for, lambda t: JSON)


def test_a_record_of_fields_with_an_envelope_is_read_as_usual() -> None:
    event = decode_foreign(fields({"ce_id": "e-1", "x-a": "1"}), decoder_for, lambda t: JSON)
    assert event.event_id == "e-1"
    assert event.payload is None
    assert dict(event.headers) == {"x-a": "1"}


def test_the_default_intake_reads_a_record_of_fields_as_any_message() -> None:
    with pytest.raises(DecodeError, match="no ce_id"):
        decode_message(fields({"id": "7"}), decoder_for)


def test_onward_a_foreign_event_carries_the_envelope_intake_gave_it() -> None:
    stamp = datetime(2026, 12, 1, 3, 0, tzinfo=timezone.utc)
    plain = record(value=b'{"a": 1}', headers={"x-src": "c"}, timestamp=stamp)
    event = decode_foreign(plain, decoder_for, lambda t: JSON)
    value, headers = foreign_onward(plain, event)
    assert value == b'{"a": 1}'
    assert headers == {
        "x-src": "c",
        "ce_specversion": "1.0",
        "ce_id": "orders:0:42",
        "ce_time": "2026-12-01T03:00:00.000000Z",
        "content-type": "application/json",
    }
    again = decode_message(evolve(plain, value=value, headers=headers), decoder_for)
    assert (again.event_id, again.payload, again.metadata.occurred_at) == ("orders:0:42", {"a": 1}, stamp)

    entry = fields({"id": "7"}, timestamp=stamp)
    value, headers = foreign_onward(entry, decode_foreign(entry, decoder_for, lambda t: JSON))
    assert value == b'{"id":"7"}'
    assert headers["ce_id"] == "orders:1764558000000-0"
    assert "id" not in headers
    assert decode_message(Message("orders", value, None, headers), decoder_for).payload == {"id": "7"}

    enveloped = record(headers={"ce_id": "e-1"})
    assert foreign_onward(enveloped, decode_foreign(enveloped, decoder_for, lambda t: JSON)) == (
        enveloped.value,
        {"ce_id": "e-1"},
    )


async def test_retry_topics_and_replays_keep_the_id_of_a_foreign_record(memory_url: str) -> None:
    broken = True

    def fail(event: Event, count: int) -> BaseException | None:
        return RuntimeError("not yet") if broken else None

    seen = Collector(fail=fail)
    options = ConsumerOptions(intake="foreign", retry_topics=(0.01,))
    async with create_bus(memory_url, topic_codecs={"blobs": "raw"}) as bus:
        await bus.subscribe(["orders", "blobs"], seen, group="billing", options=options)
        await bus.transport.publish(
            [Message(topic="orders", value=b'{"n": 1}', key="a"), Message(topic="blobs", value=b"\x00\xff")]
        )
        letters = await wait_dead_letters(bus, "orders.dlq", 1, 5) + await wait_dead_letters(
            bus, "blobs.dlq", 1, 5
        )
        first = dict(seen.calls)
        broken = False
        assert await bus.dlq.replay("orders.dlq") + await bus.dlq.replay("blobs.dlq") == 2
        await seen.wait_count(2, 5)
    ids = [letter.event_id for letter in letters]
    assert len(first) == 2 and all(count == 2 for count in first.values())  # the topic and its retry topic
    assert sorted(ids) == sorted(first) == sorted(seen.ids)
    assert {e.event_id.split(":")[0]: e.payload for e in seen.events} == {
        "orders": {"n": 1},
        "blobs": b"\x00\xff",
    }
