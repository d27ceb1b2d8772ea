from __future__ import annotations

import os
import pickle
import uuid
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from types import MappingProxyType

import attrs
import pytest
from attrs import evolve

from dotmac.events import (
    Event,
    EventMetadata,
    HeaderValidationError,
    InvalidTenantError,
    InvalidTopicError,
    JsonCodec,
    Message,
    PayloadValidationError,
    ValidationError,
)
from dotmac.events.event import MAX_HEADER_COUNT, MAX_HEADER_VALUE_LENGTH
from dotmac.events.wire import decode_message, envelope_headers


def test_defaults() -> None:
    event = Event(topic="orders.created", payload={"id": 7})
    assert event.key is None
    assert dict(event.headers) == {}
    assert event.metadata.event_id
    assert event.event_type == "orders.created"
    assert event.metadata.occurred_at.tzinfo is timezone.utc


def test_event_ids_are_unique() -> None:
    assert len({Event(topic="t").event_id for _ in range(1000)}) == 1000


def test_frozen() -> None:
    event = Event(topic="t")
    with pytest.raises(AttributeError):
        event.topic = "u"  # type: ignore[misc]
    with pytest.raises(TypeError):
        event.headers["x"] = "y"  # type: ignore[index]


def _built_every_way() -> list[Event]:
    """An event from the constructor, one from the received-message path, and one whose
    metadata was given: each is filled as a mutable draft and then made an Event."""
    codec = JsonCodec()
    sent = Event(
        topic="orders.created", payload={"id": 7, "lines": [{"sku": "a"}]}, key="k", headers={"x": "y"}
    )
    message = Message(
        topic=sent.topic,
        value=codec.encode(sent),
        key=sent.key,
        headers=envelope_headers(sent, content_type=codec.content_type, source="svc"),
    )
    received = decode_message(message, lambda _content_type: codec)
    given = Event(topic="t", metadata=EventMetadata(event_id="id-1", subject="s"))
    return [sent, received, given]


def test_built_events_are_frozen_weakrefable_and_equal_to_plain_ones() -> None:
    for event in _built_every_way():
        for obj, cls in ((event, Event), (event.metadata, EventMetadata)):
            assert type(obj) is cls
            name = attrs.fields(cls)[0].name
            with pytest.raises(attrs.exceptions.FrozenInstanceError):
                setattr(obj, name, "changed")
            assert weakref.ref(obj)() is obj
            # The same values set one by one on a bare instance: equal, same repr.
            bare = object.__new__(cls)
            for field in attrs.fields(cls):
                object.__setattr__(bare, field.name, getattr(obj, field.name))
            assert bare == obj
            assert repr(bare) == repr(obj)
        assert pickle.loads(pickle.dumps(event)) == event
        assert evolve(event, key="other").metadata == event.metadata


def test_a_subclass_of_event_is_built_as_itself() -> None:
    @attrs.frozen(init=False)
    class Audited(Event):
        pass

    event = Audited(topic="t", payload={"a": 1})
    assert type(event) is Audited
    assert event.payload == {"a": 1}
    assert event.metadata.event_id
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.topic = "u"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("topic", "fragment"),
    [
        ("", "must not be empty"),
        ("a" * 250, "maximum is 249"),
        ("orders created", "may only contain"),
        ("orders/created", "may only contain"),
        ("tenant:acme", "may only contain"),
        ("..", "not a valid topic"),
        ("café", "may only contain"),
    ],
)
def test_bad_topics(topic: str, fragment: str) -> None:
    with pytest.raises(InvalidTopicError) as info:
        Event(topic=topic)
    assert fragment in str(info.value)
    assert info.value.field == "topic"


def test_topic_must_be_str() -> None:
    with pytest.raises(InvalidTopicError, match="must be a str"):
        Event(topic=5)  # type: ignore[arg-type]


def test_longest_valid_topic() -> None:
    assert Event(topic="a" * 249).topic == "a" * 249


@pytest.mark.parametrize(
    ("headers", "field", "fragment"),
    [
        ({"bad name": "v"}, "headers", "not an HTTP token"),
        ({"": "v"}, "headers", "not an HTTP token"),
        ({"x-a": "line\r\nInjected: 1"}, "headers['x-a']", "CR, LF or NUL"),
        ({"x-a": "nul\x00"}, "headers['x-a']", "CR, LF or NUL"),
        ({"x-a": 5}, "headers['x-a']", "must be a str"),
        ({"x-a": "v" * (MAX_HEADER_VALUE_LENGTH + 1)}, "headers['x-a']", "maximum is"),
        ({f"h{i}": "v" for i in range(MAX_HEADER_COUNT + 1)}, "headers", "the maximum is"),
        ({"ce_id": "spoof"}, "headers", "reserved"),
        ({"Content-Type": "text/plain"}, "headers", "reserved"),
    ],
)
def test_bad_headers(headers: dict[str, object], field: str, fragment: str) -> None:
    with pytest.raises(HeaderValidationError) as info:
        Event(topic="t", headers=headers)  # type: ignore[arg-type]
    assert info.value.field == field
    assert fragment in str(info.value)


def test_headers_total_size_is_bounded() -> None:
    headers = {f"h{i}": "v" * 2000 for i in range(40)}
    with pytest.raises(HeaderValidationError, match="maximum is 65536"):
        Event(topic="t", headers=headers)


def test_headers_must_be_mapping() -> None:
    with pytest.raises(HeaderValidationError, match="mapping"):
        Event(topic="t", headers=[("a", "b")])  # type: ignore[arg-type]


@pytest.mark.parametrize("tenant", ["acme.eu", "acme:eu", "../acme", "acme/eu", "a*", "", "x" * 65, "ünï"])
def test_bad_tenants(tenant: str) -> None:
    with pytest.raises(InvalidTenantError) as info:
        Event(topic="t", tenant_id=tenant)
    assert info.value.field == "tenant_id"


def test_good_tenant() -> None:
    assert Event(topic="t", tenant_id="acme_EU-1").tenant_id == "acme_EU-1"


@pytest.mark.parametrize("payload", [{1, 2}, bytearray(b"b"), object(), {1: "int key"}])
def test_bad_payloads(payload: object) -> None:
    with pytest.raises(PayloadValidationError) as info:
        Event(topic="t", payload=payload)  # type: ignore[arg-type]
    assert info.value.field == "payload"


def test_key_rules() -> None:
    with pytest.raises(ValidationError, match="key"):
        Event(topic="t", key=5)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="maximum is 1024"):
        Event(topic="t", key="k" * 1025)
    with pytest.raises(ValidationError, match="NUL"):
        Event(topic="t", key="a\x00b")


def test_metadata_rules() -> None:
    with pytest.raises(ValidationError, match="timezone-aware"):
        EventMetadata(occurred_at=datetime(2026, 1, 1))  # noqa: DTZ001
    with pytest.raises(ValidationError, match=r"metadata\.correlation_id"):
        EventMetadata(correlation_id="a\nb")
    with pytest.raises(ValidationError, match=r"metadata\.reply_to"):
        EventMetadata(reply_to="not a topic")
    with pytest.raises(ValidationError, match=r"metadata\.event_id"):
        EventMetadata(event_id="")
    with pytest.raises(ValidationError, match="metadata"):
        Event(topic="t", metadata={"event_id": "x"})  # type: ignore[arg-type]


def test_occurred_at_is_normalised_to_utc() -> None:
    local = datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    assert EventMetadata(occurred_at=local).occurred_at == datetime(2026, 1, 1, 10, 0, tzinfo=timezone.utc)


def test_errors_are_value_errors_too() -> None:
    with pytest.raises(ValueError):
        Event(topic="")


def test_reply_builds_correlated_event() -> None:
    request = Event(topic="rpc", tenant_id="acme", metadata=EventMetadata(reply_to="replies"))
    reply = request.reply({"ok": True})
    assert reply.topic == "replies"
    assert reply.metadata.correlation_id == request.event_id
    assert reply.metadata.causation_id == request.event_id
    assert reply.tenant_id == "acme"
    with pytest.raises(ValidationError, match="reply_to"):
        Event(topic="rpc").reply({})


def test_with_headers() -> None:
    event = Event(topic="t", headers={"a": "1"})
    changed = event.with_headers(b="2")
    assert dict(changed.headers) == {"a": "1", "b": "2"}
    assert changed.event_id == event.event_id
    with pytest.raises(HeaderValidationError):
        event.with_headers(**{"bad name": "x"})


def test_event_ids_are_version_4_uuids() -> None:
    # More than one batch of ids made ahead, from both constructors.
    for _ in range(600):
        for made in (EventMetadata().event_id, Event(topic="t").event_id):
            parsed = uuid.UUID(made)
            assert parsed.version == 4
            assert parsed.variant == uuid.RFC_4122
            assert str(parsed) == made


def test_event_ids_are_the_uuids_of_the_random_bytes_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # Known "random" bytes: each id must be exactly what the uuid module makes of its
    # 16 bytes as a version 4 UUID (a digit copied from the wrong place fails).
    from dotmac.events import event as event_module

    block = bytes(range(256)) * 16
    monkeypatch.setattr(event_module, "_urandom", lambda n: block[:n])
    monkeypatch.setattr(event_module, "_ids", deque())
    monkeypatch.setattr(event_module, "_next_id", event_module._ids.popleft)
    made = [event_module._new_id() for _ in range(event_module._ID_BATCH)]
    expected = [str(uuid.UUID(bytes=block[i : i + 16], version=4)) for i in range(0, 16 * len(made), 16)]
    assert made == expected


def test_threads_never_share_an_event_id() -> None:
    def make() -> list[str]:
        return [Event(topic="t").event_id for _ in range(2000)]

    with ThreadPoolExecutor(4) as pool:
        made = [i for ids in pool.map(lambda _: make(), range(4)) for i in ids]
    assert len(set(made)) == len(made) == 8000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_makes_other_event_ids_than_its_parent() -> None:
    Event(topic="t")  # ids are made ahead now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write its next ids and leave without cleanup
        try:
            os.write(write, " ".join(Event(topic="t").event_id for _ in range(10)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = set(pipe.read().decode().split())
    os.waitpid(pid, 0)
    parent = {Event(topic="t").event_id for _ in range(10)}
    assert len(child) == 10
    assert not child & parent


class _Text(str):
    pass


def test_remembered_names_are_still_checked_in_context() -> None:
    # A topic, header name or tenant seen before skips its regular expression, but
    # everything else about the event is still validated.
    Event(topic="orders", headers={"x-trace": "1"}, tenant_id="acme")
    with pytest.raises(HeaderValidationError, match="CR, LF or NUL"):
        Event(topic="orders", headers={"x-trace": "a\r\nb"}, tenant_id="acme")
    with pytest.raises(HeaderValidationError, match="reserved"):
        Event(topic="orders", headers={"ce_id": "1"})
    with pytest.raises(HeaderValidationError, match="reserved"):
        Event(topic="orders", headers={"ce_id": "1"})
    with pytest.raises(InvalidTopicError):
        Event(topic=_Text("bad topic"))
    assert Event(topic=_Text("orders")).topic == "orders"


def test_read_only_headers_are_validated_too() -> None:
    with pytest.raises(HeaderValidationError, match="NUL"):
        Event(topic="t", headers=MappingProxyType({"a": "x\x00"}))
    with pytest.raises(HeaderValidationError, match="must be a str"):
        Event(topic="t", headers=MappingProxyType({"a": 1}))


def test_validation_survives_many_distinct_names() -> None:
    for i in range(5000):
        Event(topic=f"topic-{i}", headers={f"h-{i}": "v"}, tenant_id=f"t{i}")
    with pytest.raises(InvalidTopicError):
        Event(topic="topic 1")
    with pytest.raises(InvalidTenantError):
        Event(topic="topic-1", tenant_id="t/1")


def test_evolve_validates_again() -> None:
    event = Event(topic="t", headers={"a": "1"})
    assert evolve(event, topic="u").topic == "u"
    with pytest.raises(InvalidTopicError):
        evolve(event, topic="not valid")
    with pytest.raises(ValidationError, match=r"metadata\.source"):
        evolve(event.metadata, source="")
    assert attrs.has(Event)
    assert [f.name for f in attrs.fields(Event)] == [
        "topic",
        "payload",
        "key",
        "headers",
        "tenant_id",
        "metadata",
    ]


def test_events_with_equal_small_headers_share_one_checked_copy() -> None:
    given = {"x-origin": "checkout", "x-schema": "order.v1"}
    first, second = Event(topic="t", headers=given), Event(topic="t", headers=dict(given))
    assert first.headers == given
    assert first.headers is second.headers
    given["x-origin"] = "changed"
    third = Event(topic="t", headers=given)
    assert third.headers == {"x-origin": "changed", "x-schema": "order.v1"}
    assert first.headers["x-origin"] == "checkout"
    with pytest.raises(TypeError):
        first.headers["x-origin"] = "x"  # type: ignore[index]


@pytest.mark.parametrize(
    "headers",
    [
        {"x-list": ["a"]},
        {"x-bad": "a\nb"},
        {"bad name": "x"},
        {"ce_id": "x"},
        {"x-long": "v" * (MAX_HEADER_VALUE_LENGTH + 1)},
    ],
)
def test_invalid_headers_are_refused_every_time(headers: dict[str, object]) -> None:
    for _ in range(2):
        with pytest.raises(HeaderValidationError):
            Event(topic="t", headers=headers)  # type: ignore[arg-type]
