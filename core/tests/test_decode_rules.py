"""One test per decode rule and per envelope guarantee (see docs/wire-format.md)."""

from __future__ import annotations

import asyncio
import copy
import math
import pickle
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import orjson
import pytest
from attrs import evolve

from dotmac.events import (
    ConsumerOptions,
    DecodeError,
    EncodeError,
    Event,
    EventBus,
    EventMetadata,
    JsonCodec,
    Message,
    PayloadValidationError,
    SchemaValidationError,
    ValidationError,
    create_bus,
)
from dotmac.events import transport as transport_module
from dotmac.events.codec import Codec
from dotmac.events.event import MAX_PAYLOAD_DEPTH, FrozenDict, FrozenList, thaw
from dotmac.events.testing import Collector, wait_for
from dotmac.events.wire import WireHeaders, decode_message, headers_from_pairs, parse_time, split_headers

CODEC = JsonCodec()


def decoder_for(content_type: str | None) -> Codec | None:
    return CODEC if content_type in (None, CODEC.content_type) else None


def message(headers: dict[str, Any] | None = None, value: bytes = b'{"a": 1}', **extra: Any) -> Message:
    base: dict[str, Any] = {"ce_specversion": "1.0", "ce_id": "e-1", "content-type": "application/json"}
    base.update(headers or {})
    return Message(topic="t", value=value, headers=base, **extra)


# -- Message lives with the wire format ---------------------------------------------------
def test_message_is_one_class_wherever_it_is_imported_from() -> None:
    from dotmac.events import Message as Public
    from dotmac.events.wire import Message as Wire

    assert Public is Wire is transport_module.Message


# -- times at the edge of the range ---------------------------------------------------------
@pytest.mark.parametrize(
    "text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01T00:59:59+01:00"]
)
def test_a_time_with_no_utc_equivalent_is_a_decode_error(text: str) -> None:
    with pytest.raises(ValueError, match="outside the range of UTC times"):
        parse_time(text)
    with pytest.raises(DecodeError, match="malformed ce_time"):
        decode_message(message({"ce_time": text}), decoder_for)


@pytest.mark.parametrize(
    "when",
    [
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))),
        datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-2))),
    ],
)
def test_occurred_at_with_no_utc_equivalent_is_a_validation_error(when: datetime) -> None:
    with pytest.raises(ValidationError, match="no UTC equivalent") as caught:
        EventMetadata(occurred_at=when)
    assert caught.value.field == "metadata.occurred_at"


def test_the_first_and_last_representable_times_round_trip() -> None:
    for when in (datetime(1, 1, 1, tzinfo=timezone.utc), datetime.max.replace(tzinfo=timezone.utc)):
        event = Event(topic="t", metadata=EventMetadata(event_id="e", occurred_at=when))
        bus_message = _wire(event)
        assert decode_message(bus_message, decoder_for).metadata.occurred_at == when


def test_a_tzinfo_that_raises_is_a_validation_error() -> None:
    class Broken(timezone.__base__):  # type: ignore[misc,name-defined]
        def utcoffset(self, dt: datetime | None) -> timedelta:
            return timedelta(hours=30)  # outside what datetime accepts

    with pytest.raises(ValidationError, match="tzinfo"):
        EventMetadata(occurred_at=datetime(2026, 1, 1, tzinfo=Broken()))


def _wire(event: Event) -> Message:
    from dotmac.events.wire import envelope_headers

    headers = envelope_headers(event, content_type=CODEC.content_type, source="svc")
    return Message(topic=event.topic, value=CODEC.encode(event), key=event.key, headers=headers)


# -- NaN and infinities -------------------------------------------------------------------
@pytest.mark.parametrize(
    "payload",
    [
        {"x": math.nan},
        {"x": -math.inf},
        {"x": [1, None, math.inf]},
        {"x": {"y": [{"z": math.nan}]}},
        {"x": (1.0, math.nan)},
        {"x": {math.nan}},
    ],
)
def test_nan_and_infinity_are_refused_at_encode(payload: dict[str, Any]) -> None:
    with pytest.raises(EncodeError, match=r"NaN or infinity at payload\['x'\]"):
        CODEC.encode(Event(topic="t", payload=payload))


def test_nulls_and_finite_floats_still_encode() -> None:
    body = CODEC.encode(Event(topic="t", payload={"a": None, "b": [None, 1.5, -0.0], "c": "null"}))
    assert orjson.loads(body) == {"a": None, "b": [None, 1.5, -0.0], "c": "null"}


@pytest.mark.parametrize("body", [b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}', b'{"a": 1e400}'])
def test_nan_and_infinity_are_refused_at_decode(body: bytes) -> None:
    with pytest.raises(DecodeError, match="not valid JSON"):
        decode_message(message(value=body), decoder_for)


async def test_publish_refuses_nan_before_anything_is_sent(memory_url: str) -> None:
    async with create_bus(memory_url) as bus:
        seen = Collector()
        await bus.subscribe("t", seen)
        with pytest.raises(EncodeError):
            await bus.publish_many(
                [Event(topic="t", payload={"ok": 1}), Event(topic="t", payload={"x": math.nan})]
            )
        await bus.publish(Event(topic="t", payload={"marker": True}))
        await seen.wait_count(1, 5)
        assert [e.payload for e in seen.events] == [{"marker": True}]


# -- invalid UTF-8 (lone surrogates) ----------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({"x-a": "caf\udce9"}, "value of header 'x-a' is not valid UTF-8"),
        ({"x-\udcff": "v"}, "header name is not valid UTF-8"),
        ({"ce_tenantid": "\udcff"}, "value of header 'ce_tenantid' is not valid UTF-8"),
        ({"ce_unknown": "\ud800"}, "not valid UTF-8"),
        ({"x-a": b"bytes"}, "is a bytes, not text"),
        ({b"x-a": "v"}, "header name is a bytes"),
        ({"x a": "v"}, "not a token"),
        ({"ce_\x00ype": "v"}, "not a token"),
    ],
)
def test_headers_that_are_not_text_are_a_decode_error(headers: dict[Any, Any], fragment: str) -> None:
    with pytest.raises(DecodeError, match=fragment):
        decode_message(message(headers), decoder_for)


def test_a_key_that_is_not_utf8_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="key: must be valid Unicode"):
        decode_message(message(key="k\udcff"), decoder_for)


@pytest.mark.parametrize(
    "build",
    [
        lambda: Event(topic="t", key="\ud800"),
        lambda: Event(topic="t", headers={"x-a": "\udcff"}),
        lambda: EventMetadata(event_id="\udcff"),
        lambda: EventMetadata(correlation_id="c\ud800"),
    ],
)
def test_events_refuse_text_no_transport_could_write(build: Callable[[], object]) -> None:
    with pytest.raises(ValidationError, match="lone surrogate"):
        build()


def test_non_ascii_text_is_fine() -> None:
    event = Event(topic="t", key="clé", headers={"x-a": "Zoë ☕"}, metadata=EventMetadata(source="/café"))
    assert decode_message(_wire(event), decoder_for).headers == {"x-a": "Zoë ☕"}


# -- ce_specversion ---------------------------------------------------------------------
@pytest.mark.parametrize("version", ["2.0", "0.3", "1", " 1.0", ""])
def test_another_specversion_is_a_decode_error(version: str) -> None:
    with pytest.raises(DecodeError, match="ce_specversion"):
        decode_message(message({"ce_specversion": version}), decoder_for)


def test_an_absent_specversion_is_read_as_1_0() -> None:
    headers = {"ce_id": "e-1", "content-type": "application/json"}
    assert decode_message(Message(topic="t", value=b"{}", headers=headers), decoder_for).event_id == "e-1"


# -- the same attribute twice -----------------------------------------------------------
def test_one_attribute_spelled_twice_with_different_values_is_ambiguous() -> None:
    with pytest.raises(DecodeError, match="ambiguous envelope: 'ce_tenantid'"):
        decode_message(message({"ce_tenantid": "acme", "CE_TENANTID": "other"}), decoder_for)
    with pytest.raises(DecodeError, match="ambiguous envelope: 'content-type'"):
        decode_message(message({"Content-Type": "text/plain"}), decoder_for)


def test_one_attribute_spelled_twice_with_one_value_is_read() -> None:
    event = decode_message(message({"ce_tenantid": "acme", "CE_TENANTID": "acme"}), decoder_for)
    assert event.tenant_id == "acme"


def test_headers_from_pairs_records_repeated_names() -> None:
    plain = headers_from_pairs([("a", "1"), ("b", "2"), ("a", "1")])
    assert type(plain) is dict
    assert plain == {"a": "1", "b": "2"}
    marked = headers_from_pairs([("ce_id", "1"), ("x-a", "1"), ("x-a", "2"), ("ce_id", "2"), ("x-a", "3")])
    assert isinstance(marked, WireHeaders)
    assert marked.conflicts == ("x-a", "ce_id")
    assert marked == {"ce_id": "1", "x-a": "1"}
    with pytest.raises(DecodeError, match="ambiguous envelope: header 'x-a', 'ce_id' repeated"):
        split_headers(marked)


def test_a_user_header_repeated_with_different_values_is_ambiguous() -> None:
    pairs = [("ce_id", "e-1"), ("x-a", "1"), ("x-a", "2")]
    with pytest.raises(DecodeError, match="ambiguous"):
        decode_message(Message(topic="t", value=b"{}", headers=headers_from_pairs(pairs)), decoder_for)


# -- whatever a codec or a validator raises ----------------------------------------------
class ExplodingCodec(Codec):
    name = "boom"
    content_type = "application/x-boom"

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def encode(self, event: Event) -> bytes:
        return b""

    def decode(self, data: bytes, *, topic: str, headers: Any) -> dict[str, Any]:
        raise self.exc


@pytest.mark.parametrize(
    "exc", [IndexError("i"), KeyError("k"), RecursionError("r"), UnicodeDecodeError("utf-8", b"", 0, 1, "x")]
)
def test_whatever_a_codec_raises_is_a_decode_error(exc: Exception) -> None:
    codec = ExplodingCodec(exc)
    with pytest.raises(DecodeError, match=f"the 'boom' codec could not read.*{type(exc).__name__}") as caught:
        decode_message(message({"content-type": codec.content_type}), lambda _: codec)
    assert caught.value.__cause__ is exc


def test_a_codec_that_returns_no_json_value_is_a_decode_error() -> None:
    class SetCodec(ExplodingCodec):
        def decode(self, data: bytes, *, topic: str, headers: Any) -> Any:
            return {1, 2}

    with pytest.raises(DecodeError, match="payload: must be a dict .*got set"):
        decode_message(message(), lambda _: SetCodec(ValueError()))


@pytest.mark.parametrize("exc", [KeyError("id"), TypeError("t"), RecursionError("r"), OverflowError("o")])
def test_whatever_a_validator_raises_is_a_schema_validation_error(exc: Exception) -> None:
    def validate(payload: dict[str, Any]) -> None:
        raise exc

    with pytest.raises(SchemaValidationError, match=type(exc).__name__) as caught:
        decode_message(message(), decoder_for, validate)
    assert caught.value.__cause__ is exc


def test_a_validator_returning_false_is_a_schema_validation_error() -> None:
    with pytest.raises(SchemaValidationError, match="rejected by the validator"):
        decode_message(message(), decoder_for, lambda payload: False)


async def test_a_raising_validator_dead_letters_with_reason_schema(memory_url: str) -> None:
    async with create_bus(memory_url) as bus:
        bus.add_validator("orders", lambda payload: payload["id"] > 0)
        seen = Collector()
        await bus.subscribe("orders", seen)
        await bus.transport.publish(
            [
                Message(topic="orders", value=b'{"sku": "A"}', headers={"ce_id": "no-id"}),
                Message(topic="orders", value=b'{"id": 3}', headers={"ce_id": "good"}),
            ]
        )
        await seen.wait_count(1, 5)
        letters = await read_until(bus, "orders.dlq", 1)
    assert seen.ids == ["good"]
    assert letters[0].headers["ce_id"] == "no-id"
    assert letters[0].headers["x-dlq-reason"] == "schema"
    assert letters[0].headers["x-dlq-error-type"] == "SchemaValidationError"
    assert "'id'" in letters[0].headers["x-dlq-error-message"]


async def read_until(bus: EventBus, topic: str, count: int, timeout: float = 5) -> list[Message]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        messages = await bus.transport.read(topic)
        if len(messages) >= count:
            return messages
        assert loop.time() < deadline, f"fewer than {count} messages on {topic}"
        await asyncio.sleep(0.01)


# -- an event never changes --------------------------------------------------------------
def test_changing_what_was_passed_in_does_not_change_the_event() -> None:
    payload: dict[str, Any] = {"a": 1, "nested": {"b": [1, 2]}}
    headers = {"x-a": "1"}
    event = Event(topic="t", payload=payload, headers=headers)
    payload["a"] = 2
    payload["nested"]["b"].append(3)
    headers["x-a"] = "2"
    assert event.payload == {"a": 1, "nested": {"b": [1, 2]}}
    assert event.headers == {"x-a": "1"}


def test_the_dict_behind_a_mapping_proxy_cannot_change_the_event() -> None:
    backing = {"x-a": "1"}
    event = Event(topic="t", headers=MappingProxyType(backing))
    backing["x-a"] = "2"
    assert event.headers == {"x-a": "1"}


@pytest.mark.parametrize(
    "change",
    [
        lambda p: p.__setitem__("a", 2),
        lambda p: p.update(a=2),
        lambda p: p.pop("a"),
        lambda p: p.setdefault("z", 1),
        lambda p: p.clear(),
        lambda p: p.__delitem__("a"),
        lambda p: p.popitem(),
        lambda p: p.__ior__({"a": 2}),
        lambda p: p["nested"].__setitem__("b", None),
        lambda p: p["nested"]["b"].append(3),
        lambda p: p["nested"]["b"].__setitem__(0, 9),
        lambda p: p["nested"]["b"].sort(),
        lambda p: p["nested"]["b"].__iadd__([4]),
        lambda p: p["nested"]["b"].extend([4]),
    ],
)
def test_the_payload_is_read_only_all_the_way_down(change: Callable[[Any], object]) -> None:
    event = Event(topic="t", payload={"a": 1, "nested": {"b": [2, 1]}})
    with pytest.raises(TypeError, match="read-only"):
        change(event.payload)
    assert event.payload == {"a": 1, "nested": {"b": [2, 1]}}


def test_headers_are_read_only() -> None:
    event = Event(topic="t", headers={"x-a": "1"})
    with pytest.raises(TypeError, match="read-only"):
        event.headers["x-a"] = "2"  # type: ignore[index]


def test_a_frozen_payload_is_still_a_dict_and_copies_are_mutable() -> None:
    event = Event(topic="t", payload={"a": [1], "s": {1, 2}})
    payload = event.payload
    assert isinstance(payload, dict)
    assert isinstance(payload["a"], list)
    assert payload["s"] == frozenset({1, 2})
    mine = dict(payload)
    mine["b"] = 2
    assert {**payload, "b": 2} == mine
    assert orjson.loads(CODEC.encode(event)) == {"a": [1], "s": [1, 2]}
    for clone in (copy.copy(payload), copy.deepcopy(payload), pickle.loads(pickle.dumps(payload))):
        assert clone == payload
    assert type(copy.deepcopy(payload)) is FrozenDict
    assert type(pickle.loads(pickle.dumps(payload["a"]))) is FrozenList


def test_evolving_an_event_does_not_copy_its_frozen_payload() -> None:
    event = Event(topic="t", payload={"a": {"b": 1}})
    assert evolve(event, key="k").payload is event.payload
    assert event.with_headers(x="1").payload is event.payload


def test_a_payload_that_contains_itself_or_nests_too_deep_is_refused() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(PayloadValidationError, match="deeper than"):
        Event(topic="t", payload=loop)
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(MAX_PAYLOAD_DEPTH + 1):
        node["n"] = {}
        node = node["n"]
    with pytest.raises(PayloadValidationError, match="deeper than"):
        Event(topic="t", payload=deep)


async def test_a_handler_cannot_change_what_its_retries_see(memory_url: str) -> None:
    seen: list[dict[str, Any]] = []

    async def handler(event: Event) -> None:
        seen.append(dict(event.payload))
        event.payload["attempt"] = len(seen)  # type: ignore[index]

    async with create_bus(memory_url) as bus:
        await bus.subscribe("t", handler, options=ConsumerOptions(max_retries=2))
        await bus.publish(Event(topic="t", payload={"id": 1}))
        await wait_for(lambda: len(seen) == 3, 5, what="three attempts")
    assert seen == [{"id": 1}] * 3


def test_the_attrs_fields_carry_no_second_set_of_defaults() -> None:
    import attrs

    for cls in (Event, EventMetadata):
        assert all(f.default is attrs.NOTHING for f in attrs.fields(cls)), cls
    assert Event(topic="t").payload == {}
    assert Event(topic="t").headers == {}


def test_thaw_gives_plain_mutable_containers_all_the_way_down() -> None:
    event = Event(topic="t", payload={"a": [{"b": [1]}], "t": (1, [2])})
    plain = thaw(event.payload)
    assert plain == event.payload
    assert type(plain) is dict
    assert type(plain["a"]) is list
    assert type(plain["a"][0]) is dict
    assert type(plain["t"][1]) is list
    plain["a"][0]["b"].append(2)
    assert event.payload["a"][0]["b"] == [1]


def test_a_whole_event_copies_and_pickles() -> None:
    event = Event(topic="t", payload={"a": [{"b": 1}]}, headers={"x-a": "1"}, tenant_id="acme")
    for clone in (copy.copy(event), copy.deepcopy(event), pickle.loads(pickle.dumps(event))):
        assert clone == event
        assert type(clone.payload["a"]) is FrozenList
    assert FrozenDict.fromkeys(["a", "b"], 0) == {"a": 0, "b": 0}
    assert type(FrozenDict.fromkeys(["a"])) is FrozenDict
