"""The quick decode of plain JSON messages gives what the full decode gives.

``decode_message`` reads a message whose headers are a plain ``dict`` with
``content-type: application/json`` on a quick path (names checked once per sequence
of header names, values checked together) and falls back to the full path for
anything unusual. Received headers in a :class:`WireHeaders` always take the full
path, so decoding the same message both ways must give equal events, or errors of
the same class with the same text, whatever the headers hold.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson
import pytest
from attrs import evolve
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dotmac.events import DecodeError, Event, EventBusError, JsonCodec, Message
from dotmac.events.codec import Codec
from dotmac.events.event import MAX_PAYLOAD_DEPTH, FrozenDict, FrozenList, _frozen_dict, _frozen_received
from dotmac.events.wire import WireHeaders, _parse_time, decode_message, format_time, parse_time

CODEC = JsonCodec()
BASE: dict[str, str] = {
    "x-origin": "checkout",
    "ce_specversion": "1.0",
    "ce_id": "5b1c0a52-58e4-4a5e-9d9b-2f0f5c1c1e11",
    "ce_type": "orders",
    "ce_source": "svc",
    "ce_time": "2026-12-01T06:00:00.000001Z",
    "content-type": "application/json",
}
BODY = orjson.dumps({"order_id": 1, "shipping": {"country": "DE"}, "lines": [1, [2]]})


def decoder_for(content_type: str | None) -> Codec | None:
    return CODEC if content_type in (None, CODEC.content_type) else None


def full_path(headers: dict[str, Any]) -> WireHeaders:
    wire = WireHeaders()
    wire.update(headers)
    return wire


def outcome(message: Message) -> Event | tuple[type[BaseException], str]:
    try:
        return decode_message(message, decoder_for)
    except EventBusError as exc:
        return type(exc), str(exc)


def assert_same(topic: str, body: bytes, key: Any, headers: dict[str, Any]) -> None:
    # The full path first: it remembers the topic, so the quick path can be taken.
    full = outcome(Message(topic=topic, value=body, key=key, headers=full_path(headers)))
    quick = outcome(Message(topic=topic, value=body, key=key, headers=dict(headers)))
    if isinstance(quick, Event) and isinstance(full, Event) and "ce_time" not in headers:
        # Both take the time of decoding.
        assert quick.metadata.occurred_at.tzinfo is full.metadata.occurred_at.tzinfo
        full = evolve(full, metadata=evolve(full.metadata, occurred_at=quick.metadata.occurred_at))
    assert quick == full
    if isinstance(quick, Event):
        assert type(quick.payload) is type(full.payload)
        assert type(quick.headers) is FrozenDict


def test_a_plain_message_is_read_the_same_both_ways() -> None:
    assert_same("orders", BODY, "k", BASE)
    event = decode_message(Message("orders", BODY, "k", dict(BASE)), decoder_for)
    assert event.headers == {"x-origin": "checkout"}
    assert event.metadata.source == "svc"
    with pytest.raises(TypeError):
        event.payload["shipping"]["country"] = "FR"  # type: ignore[index]
    with pytest.raises(TypeError):
        event.payload["lines"][1].append(3)


# Values that each break one rule of the envelope, of a header or of an event field.
TRICKY = [
    "",
    "x" * 257,
    "x" * 9000,
    "a\nb",
    "a\rb",
    "a\x00b",
    "caf\u00e9",
    "bad\udcff",
    "2.0",
    "1.0",
    "not a time",
    "0001-01-01T00:00:00+01:00",
    "2026-12-01T06:00:00+02:00",
    "acme.eu",
    "tenant-1",
    "orders",
]
NAMES = [
    "x-origin",
    "X-Origin",
    "ce_id",
    "CE_ID",
    "ce_tenantid",
    "ce_correlationid",
    "ce_foo",
    "ce_Foo",
    "ce_time",
    "ce_specversion",
    "content-type",
    "Content-Type",
    "bad name",
    "n" * 129,
]
KEYS = [None, "k", "", "a\x00b", "k" * 1025, "bad\udcff", "caf\u00e9", 7]
BODIES = [BODY, b"", b"null", b"[1, 2]", b"{", b"[" * 300 + b"]" * 300, b'{"a": NaN}', b'{"a": "\xff"}']


def test_each_tricky_value_under_each_name_is_read_the_same_both_ways() -> None:
    for name in NAMES:
        for value in [*TRICKY, 7, None]:
            assert_same("orders", BODY, "k", {**BASE, name: value})
    for key in KEYS:
        assert_same("orders", BODY, key, BASE)
    for body in BODIES:
        assert_same("orders", body, None, BASE)
    for dropped in BASE:
        assert_same("orders", BODY, None, {n: v for n, v in BASE.items() if n != dropped})


values = st.one_of(st.sampled_from(TRICKY), st.text(max_size=12), st.integers(), st.none())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    changes=st.dictionaries(st.sampled_from(NAMES), values, max_size=4),
    drop=st.sets(st.sampled_from(sorted(BASE)), max_size=2),
    topic=st.sampled_from(["orders", "other.topic", "bad topic", "", "x" * 300]),
    key=st.sampled_from(KEYS),
    body=st.sampled_from(BODIES),
)
def test_any_message_is_read_the_same_both_ways(
    changes: dict[str, Any], drop: set[str], topic: str, key: Any, body: bytes
) -> None:
    headers: dict[str, Any] = {n: v for n, v in BASE.items() if n not in drop}
    headers.update(changes)
    assert_same(topic, body, key, headers)


def test_a_tenant_is_read_quickly_only_once_it_was_validated() -> None:
    headers = {**BASE, "ce_tenantid": "tenant-quick-1"}
    assert_same("orders", BODY, None, headers)
    event = decode_message(Message("orders", BODY, None, dict(headers)), decoder_for)
    assert event.tenant_id == "tenant-quick-1"
    foreign = {**BASE, "ce_tenantid": "acme.eu"}
    event = decode_message(Message("orders", BODY, None, dict(foreign)), decoder_for)
    assert event.tenant_id is None
    assert event.metadata.extensions == {"tenantid": "acme.eu"}


def test_an_envelope_error_wins_over_a_body_error_on_both_paths() -> None:
    headers = {**BASE, "x-bad": "bad\udcff"}
    with pytest.raises(DecodeError, match="x-bad"):
        decode_message(Message("orders", b"{", None, dict(headers)), decoder_for)
    assert_same("orders", b"{", None, headers)


# -- the receive path's fast helpers against the general ones ------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=20,
)
# Beyond what a JSON decoder gives: values the general freeze also handles.
ANY_VALUES = st.recursive(
    JSON_VALUES | st.just(datetime(2026, 1, 1)) | st.binary(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=3), inner, max_size=3)
        | st.tuples(inner, inner)
        | st.frozensets(st.integers(), max_size=2)
        | st.sets(st.integers(), max_size=2)
    ),
    max_leaves=20,
)


def freeze_outcome(freeze: Any, value: dict[str, Any], depth: int) -> Any:
    try:
        return freeze(value, depth)
    except EventBusError as exc:
        return type(exc), str(exc)


def same_shape(a: Any, b: Any) -> bool:
    """Equal, with the same classes at every level (FrozenDict is not dict here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_shape(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_shape(x, y) for x, y in zip(a, b))
    return bool(a == b)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=4), ANY_VALUES, max_size=6), st.sampled_from([0, 1, 250, 254, 255]))
def test_freezing_a_received_payload_gives_what_the_general_freeze_gives(
    payload: dict[str, Any], depth: int
) -> None:
    fast = freeze_outcome(_frozen_received, payload, depth)
    general = freeze_outcome(_frozen_dict, payload, depth)
    assert same_shape(fast, general)


def test_freezing_a_received_payload_refuses_the_same_depth() -> None:
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(MAX_PAYLOAD_DEPTH + 1):
        deep = {"next": deep, "n": 0}
    fast = freeze_outcome(_frozen_received, deep, 0)
    assert isinstance(fast, tuple)
    assert fast == freeze_outcome(_frozen_dict, deep, 0)
    frozen = _frozen_received({"a": {"b": [1, {"c": 2}]}, "s": {1}}, 0)
    assert type(frozen["a"]) is FrozenDict and type(frozen["a"]["b"]) is FrozenList
    assert type(frozen["a"]["b"][1]) is FrozenDict and frozen["s"] == frozenset({1})


def time_outcome(parse: Any, text: str) -> Any:
    try:
        moment = parse(text)
    except (ValueError, OverflowError) as exc:
        return type(exc), str(exc)
    return moment, moment.tzinfo


TIME_TEXT = st.one_of(
    st.datetimes(timezones=st.just(timezone.utc)).map(format_time),
    # 27 characters ending in Z (the fast path's shape), from the characters of a time.
    st.text(alphabet="0123456789-:T.+Zz W", min_size=26, max_size=26).map(lambda t: t + "Z"),
    st.text(alphabet="0123456789-:T.+Zz", max_size=30),
)


@settings(max_examples=500, deadline=None)
@given(TIME_TEXT)
@example("2026-12-01T06:00:00.000001Z")
@example("0001-01-01T00:00:00.000000Z")
@example("9999-12-31T23:59:59.999999Z")
@example("2026-W01-1T00:00:00.00000Z")
@example("2026-12-01T06:00:00+00:00ZZ")
def test_a_received_time_is_read_as_the_general_parse_reads_it(text: str) -> None:
    assert time_outcome(parse_time, text) == time_outcome(_parse_time, text)
