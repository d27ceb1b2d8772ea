from __future__ import annotations

import dataclasses
import enum
import pickle
import uuid
import weakref
from datetime import date, datetime, timezone
from decimal import Decimal

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dotmac.events import DecodeError, EncodeError, Event, EventMetadata, JsonCodec, Message
from dotmac.events.wire import FieldsMessage, build_event, envelope_headers, format_time, parse_time


@attrs.define
class Money:
    amount: Decimal
    currency: str


@dataclasses.dataclass
class Line:
    sku: str
    qty: int


class Colour(enum.Enum):
    RED = "red"


def test_json_is_stable_and_compact() -> None:
    codec = JsonCodec()
    a = codec.encode(Event(topic="t", payload={"b": 1, "a": {"z": 1, "y": [1, 2]}}))
    b = codec.encode(Event(topic="t", payload={"a": {"y": [1, 2], "z": 1}, "b": 1}))
    assert a == b == b'{"a":{"y":[1,2],"z":1},"b":1}'


def test_json_rich_types() -> None:
    codec = JsonCodec()
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    payload = {
        "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        "day": date(2026, 1, 2),
        "id": ident,
        "price": Decimal("12.30"),
        "money": Money(Decimal("1.10"), "EUR"),
        "line": Line("A", 2),
        "colour": Colour.RED,
        "text": "Zoë 🚀",
    }
    decoded = codec.decode(codec.encode(Event(topic="t", payload=payload)), topic="t", headers={})
    assert decoded == {
        "when": "2026-01-02T03:04:05+00:00",
        "day": "2026-01-02",
        "id": str(ident),
        "price": "12.30",
        "money": {"amount": "1.10", "currency": "EUR"},
        "line": {"sku": "A", "qty": 2},
        "colour": "red",
        "text": "Zoë 🚀",
    }


def test_json_encode_errors() -> None:
    with pytest.raises(EncodeError, match="not JSON-serialisable"):
        JsonCodec().encode(Event(topic="t", payload={"x": object()}))
    with pytest.raises(EncodeError, match="bytes"):
        JsonCodec().encode(Event(topic="t", payload={"x": b"raw"}))


@pytest.mark.parametrize(("data", "fragment"), [(b"{nope", "not valid JSON"), (b"[1", "not valid JSON")])
def test_json_decode_errors(data: bytes, fragment: str) -> None:
    with pytest.raises(DecodeError, match=fragment):
        JsonCodec().decode(data, topic="t", headers={})


def test_envelope_round_trip() -> None:
    meta = EventMetadata(
        event_type="order.created",
        source="shop",
        correlation_id="c",
        causation_id="d",
        reply_to="replies",
        schema_version="3",
    )
    event = Event(
        topic="orders", payload={"a": 1}, key="k", headers={"x-a": "1"}, tenant_id="acme", metadata=meta
    )
    headers = envelope_headers(event, content_type="application/json", source="default")
    assert headers["ce_specversion"] == "1.0"
    assert headers["ce_id"] == event.event_id
    assert headers["ce_type"] == "order.created"
    assert headers["ce_source"] == "shop"
    assert headers["ce_tenantid"] == "acme"
    assert headers["content-type"] == "application/json"
    assert headers["x-a"] == "1"
    back = build_event(Message(topic="orders", value=b"", key="k", headers=headers), {"a": 1})
    assert back.metadata.reply_to == "replies"
    assert back.metadata.schema_version == "3"
    assert back.metadata.occurred_at == meta.occurred_at
    assert back.tenant_id == "acme"
    assert dict(back.headers) == {"x-a": "1"}


def test_envelope_defaults_type_and_source() -> None:
    headers = envelope_headers(Event(topic="orders"), content_type="application/json", source="svc")
    assert headers["ce_type"] == "orders"
    assert headers["ce_source"] == "svc"
    assert "ce_tenantid" not in headers


def test_missing_or_bad_envelope_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="no ce_id"):
        build_event(Message(topic="t", value=b""), {})
    with pytest.raises(DecodeError, match="ce_time"):
        build_event(Message(topic="t", value=b"", headers={"ce_id": "1", "ce_time": "yesterday"}), {})
    with pytest.raises(DecodeError, match="invalid envelope"):
        build_event(Message(topic="t", value=b"", headers={"ce_id": "1", "ce_replyto": "a/b"}), {})


def test_time_format() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    assert format_time(moment) == "2026-01-02T03:04:05.000006Z"
    assert parse_time(format_time(moment)) == moment
    assert parse_time("2026-01-02T03:04:05+00:00") == moment.replace(microsecond=0)


AWARE_TIMES = st.datetimes(datetime(2, 1, 1), datetime(9998, 12, 31), timezones=st.timezones())
# One field of a time at a time: (field, its range). Day 28 exists in every month.
FIELDS = [
    ("year", 2, 9998),
    ("month", 1, 12),
    ("day", 1, 28),
    ("hour", 0, 23),
    ("minute", 0, 59),
    ("second", 0, 59),
]


@settings(max_examples=300)
@given(AWARE_TIMES, st.lists(st.sampled_from(FIELDS), max_size=8), st.data())
def test_time_format_matches_isoformat_whatever_came_before(
    moment: datetime, changes: list[tuple[str, int, int]], data: st.DataObject
) -> None:
    # format_time keeps the text of the last second it wrote: a time that differs from
    # the one before in one field only (or in its microsecond, or its zone) must still
    # come out as isoformat says.
    value = moment.astimezone(timezone.utc)
    times = [moment, value]
    value = value.replace(day=min(value.day, 28))  # so that any month and year can follow
    for name, low, high in changes:
        value = value.replace(**{name: data.draw(st.integers(low, high))})
        times.append(value)
        times.append(value.replace(microsecond=data.draw(st.integers(0, 999_999))))
    for value in times:
        expected = value.astimezone(timezone.utc).isoformat(timespec="microseconds")[:26] + "Z"
        assert format_time(value) == expected


@pytest.mark.parametrize("cls", [Message, FieldsMessage])
def test_messages_are_frozen_weakrefable_and_equal_to_plain_ones(cls: type[Message]) -> None:
    built = [
        cls("orders", b"{}"),
        cls("orders", b"{}", "k", {"ce_id": "1"}, "3-0", datetime(2026, 1, 1, tzinfo=timezone.utc)),
        cls(topic="orders", value=b"", headers={"a": "b"}, position="0:7"),
    ]
    for message in built:
        assert type(message) is cls
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            message.topic = "changed"  # type: ignore[misc]
        assert weakref.ref(message)() is message
        # The same values set one by one on a bare instance: equal, same repr.
        bare = object.__new__(cls)
        for name in attrs.fields_dict(cls):
            object.__setattr__(bare, name, getattr(message, name))
        assert bare == message
        assert repr(bare) == repr(message)
        assert pickle.loads(pickle.dumps(message)) == message
        assert attrs.evolve(message, key="other").key == "other"
    assert built[0].key is None and built[0].headers == {} and built[0].position is None
    assert built[0].headers is not cls("orders", b"{}").headers  # a fresh dict each time


def test_a_subclass_of_message_with_slots_of_its_own_is_built_as_itself() -> None:
    class Traced(Message):
        __slots__ = ("span",)

    message = Traced("orders", b"{}", key="k")
    assert type(message) is Traced
    assert (message.topic, message.value, message.key, message.headers) == ("orders", b"{}", "k", {})
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        message.key = "other"  # type: ignore[misc]
