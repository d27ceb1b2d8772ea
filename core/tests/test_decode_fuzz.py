"""A fuzz target over the decode path: bytes in, an Event or an EventBusError out.

Each input is one received message in a small byte format (topic, key, header pairs,
body, split by control bytes) built by mutating real wire messages with byte edits
and splices from a dictionary of envelope tokens, the way a coverage-less libFuzzer
run would. CI runs a fixed, derandomized budget in seconds; set
``DOTMAC_EVENTS_FUZZ_EXAMPLES`` (for example ``200000``) to run that many random
inputs instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from attrs import evolve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dotmac.events import (
    DecodeError,
    Event,
    EventMetadata,
    JsonCodec,
    Message,
    SchemaValidationError,
    ValidationError,
)
from dotmac.events.codec import Codec
from dotmac.events.wire import decode_message, envelope_headers, headers_from_pairs

FUZZ_ENV = "DOTMAC_EVENTS_FUZZ_EXAMPLES"
CI_EXAMPLES = 500
EXAMPLES = int(os.environ.get(FUZZ_ENV, "0") or 0)

FIELD, PAIR = b"\x1e", b"\x1f"
CODEC = JsonCodec()


def decoder_for(content_type: str | None) -> Codec | None:
    return CODEC if content_type in (None, CODEC.content_type) else None


def to_bytes(message: Message) -> bytes:
    pairs = [name.encode() + PAIR + value.encode() for name, value in message.headers.items()]
    key = (message.key or "").encode()
    return FIELD.join([message.topic.encode(), key, *pairs, message.value])


def from_bytes(data: bytes) -> Message:
    """The message a transport would hand over for these bytes (surrogateescape, pairs)."""
    fields = data.split(FIELD)
    text = [f.decode("utf-8", "surrogateescape") for f in fields[:-1]]
    topic = text[0] if text else ""
    key = text[1] if len(text) > 1 and text[1] else None
    pairs = []
    for field in text[2:]:
        name, _, value = field.partition(PAIR.decode())
        pairs.append((name, value))
    return Message(topic=topic, value=fields[-1], key=key, headers=headers_from_pairs(pairs))


def _seeds() -> list[bytes]:
    events = [
        Event(
            topic="orders",
            payload={"id": 7, "items": [{"sku": "A", "n": 2}]},
            key="7",
            metadata=EventMetadata(
                event_id="e-1", occurred_at=datetime(2026, 1, 2, 3, 4, 5, 6, timezone.utc)
            ),
        ),
        Event(
            topic="t",
            payload={},
            headers={"x-a": "Zoë ☕"},
            tenant_id="acme",
            metadata=EventMetadata(
                event_id="e-2",
                occurred_at=datetime(1, 1, 1, tzinfo=timezone.utc),
                event_type="order.created",
                correlation_id="c-1",
                causation_id="c-0",
                reply_to="dotmac.reply.abc",
                schema_version="2",
            ),
        ),
    ]
    seeds = []
    for event in events:
        headers = envelope_headers(event, content_type=CODEC.content_type, source="svc")
        seeds.append(
            to_bytes(Message(topic=event.topic, value=CODEC.encode(event), key=event.key, headers=headers))
        )
    return seeds


SEEDS = _seeds()
TOKENS = [
    b"ce_id",
    b"CE_ID",
    b"ce_time",
    b"ce_specversion",
    b"ce_tenantid",
    b"CE_TENANTID",
    b"content-type",
    b"Content-Type",
    b"ce_replyto",
    b"1.0",
    b"2.0",
    b"0001-01-01T00:00:00+01:00",
    b"9999-12-31T23:59:59-01:00",
    b"+01:00",
    b"-23:59",
    b"Z",
    b"\xff",
    b"\xed\xa0\x80",  # an encoded surrogate: not UTF-8
    b"\xc3",
    b"NaN",
    b"1e400",
    b"18446744073709551616",
    b'"\\ud800"',
    b"[" * 300,
    b"{",
    b"null",
    b"application/json",
    b"text/plain",
    b"\r\n",
    b"\x00",
    FIELD,
    PAIR,
]


@st.composite
def fuzz_inputs(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "splice", "copy"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == "splice":
            data[pos:pos] = draw(st.sampled_from(TOKENS))
        elif op == "copy" and data:
            start = draw(st.integers(0, len(data) - 1))
            data[pos:pos] = data[start : start + draw(st.integers(1, 40))]
    return bytes(data)


def _raise(exc: BaseException) -> Callable[[dict[str, Any]], object]:
    def validate(payload: dict[str, Any]) -> object:
        raise exc

    return validate


VALIDATORS: list[Callable[[dict[str, Any]], object] | None] = [
    None,
    None,
    lambda payload: payload["id"] > 0,  # KeyError, TypeError, or False
    _raise(RecursionError("deep")),
]

if EXAMPLES:
    FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None)
else:
    # Derandomized: CI explores the same inputs on every run, so a failure is reproducible.
    FUZZ_SETTINGS = settings(max_examples=CI_EXAMPLES, deadline=None, derandomize=True, database=None)


@settings(FUZZ_SETTINGS, suppress_health_check=list(HealthCheck))
@given(fuzz_inputs(), st.sampled_from(VALIDATORS))
def test_fuzz_decode(data: bytes, validate: Callable[[dict[str, Any]], object] | None) -> None:
    message = from_bytes(data)
    try:
        event = decode_message(message, decoder_for, validate)
    except DecodeError:
        return
    except ValidationError as exc:
        rejected: ValidationError = exc
    else:
        check_round_trip(event)
        return
    # Only a payload the codec read but the validator rejected.
    assert validate is not None
    assert isinstance(rejected, SchemaValidationError)


def check_round_trip(event: Event) -> None:
    # Whatever decodes is a valid event and survives another trip over the wire, with
    # the defaults a publishing bus fills in made explicit.
    meta = event.metadata
    expected = evolve(
        event,
        metadata=evolve(
            meta,
            event_type=meta.event_type or event.topic,
            source=meta.source or "svc",
            content_type=CODEC.content_type,
        ),
    )
    again = Message(
        topic=event.topic,
        value=CODEC.encode(event),
        key=event.key,
        headers=envelope_headers(event, content_type=CODEC.content_type, source="svc"),
    )
    assert decode_message(again, decoder_for) == expected


def test_the_seeds_decode() -> None:
    # The fuzzer starts from valid messages; if these stopped decoding it would only
    # ever test the first check.
    for seed in SEEDS:
        assert isinstance(decode_message(from_bytes(seed), decoder_for), Event)
